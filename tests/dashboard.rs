//! The Grafana dashboard `deploy/dashboards/ringtail.json`: every query selects the scrape job
//! and the node through its variables, on the Prometheus data source the user picks, and every
//! metric it queries is on a real ringtail's /metrics (after it has shipped something), so no
//! panel stays empty for a misspelt or unexposed name.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::monitoring::{deploy_dir, promql_metric_names, sample_names};
use support::ShippingRingtail;

/// Every metric the dashboard's panels query.
const PANEL_METRICS: [&str; 13] = [
    "loki_process_duration_seconds_bucket",
    "loki_write_batch_retries_total",
    "loki_write_dropped_entries_total",
    "loki_write_request_duration_seconds_bucket",
    "loki_write_request_duration_seconds_count",
    "loki_write_sent_bytes_total",
    "loki_write_sent_entries_total",
    "ringtail_events_leader",
    "ringtail_files_tracked",
    "ringtail_read_bytes_total",
    "ringtail_read_lag_bytes",
    "ringtail_read_lines_total",
    "ringtail_streams_tracked",
];

const PANELS: [&str; 9] = [
    "Bytes read and sent",
    "Lines read and entries sent",
    "Dropped entries by reason",
    "Push requests by status",
    "Read lag by source",
    "Files and streams tracked",
    "Processing latency",
    "Push request latency",
    "Events leader",
];

const DATASOURCE: &str = "${datasource}";

fn dashboard() -> Value {
    let path = deploy_dir().join("dashboards/ringtail.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The panels that query something (rows are only headings).
fn query_panels(d: &Value) -> Vec<&Value> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

fn exprs(d: &Value) -> Vec<(&str, &str)> {
    query_panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().expect("a title");
            p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(move |t| (title, t["expr"].as_str().expect("an expr")))
        })
        .collect()
}

fn variable<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

/// The selector of a `label_values(<selector>, <label>)` variable query, and its label.
fn label_values(v: &Value) -> (&str, &str) {
    let q = v["query"]["query"].as_str().expect("a query");
    assert_eq!(v["definition"].as_str(), Some(q));
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {q}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    (selector.trim(), label.trim())
}

#[test]
fn dashboard_has_the_panels_and_variables_and_queries_through_them() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    assert_eq!(d["uid"], "ringtail");
    assert_eq!(d["title"], "ringtail");

    let titles: Vec<&str> = query_panels(&d)
        .iter()
        .map(|p| p["title"].as_str().expect("a title"))
        .collect();
    assert_eq!(titles, PANELS);

    // The data source is a variable, so the dashboard imports into any Grafana.
    let ds = variable(&d, "datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let job = variable(&d, "job");
    assert_eq!(job["datasource"]["uid"], DATASOURCE);
    assert_eq!(label_values(job).1, "job");
    assert_eq!(
        job["current"]["value"], "ringtail",
        "the ServiceMonitor's job"
    );
    let node = variable(&d, "node");
    assert_eq!(node["datasource"]["uid"], DATASOURCE);
    assert_eq!(
        label_values(node),
        ("loki_write_sent_entries_total{job=\"$job\"}", "node")
    );
    assert_eq!(node["includeAll"], true);
    assert_eq!(node["allValue"], ".*");

    for p in query_panels(&d) {
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], DATASOURCE, "{title}");
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], DATASOURCE, "{title}");
        }
    }
    for (title, expr) in exprs(&d) {
        assert!(expr.contains("job=\"$job\""), "{title}: {expr}");
        // The events leader is one pod per cluster, whichever node it is on.
        if title != "Events leader" {
            assert!(expr.contains("node=~\"$node\""), "{title}: {expr}");
        }
        if expr.contains("rate(") {
            assert!(expr.contains("[$__rate_interval]"), "{title}: {expr}");
        }
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_on_ringtails_metrics() {
    let d = dashboard();
    let used: BTreeSet<String> = exprs(&d)
        .into_iter()
        .flat_map(|(_, e)| promql_metric_names(e))
        .collect();
    assert_eq!(
        used,
        PANEL_METRICS.iter().map(|n| n.to_string()).collect(),
        "the metrics the panels query"
    );
    let mut wanted = used;
    for v in ["job", "node"] {
        wanted.extend(promql_metric_names(label_values(variable(&d, v)).0));
    }

    let ringtail = ShippingRingtail::start(3);
    let exposed = sample_names(&ringtail.metrics());
    let missing: Vec<&String> = wanted.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "not on ringtail's /metrics: {missing:?}; it has {exposed:?}"
    );
}
