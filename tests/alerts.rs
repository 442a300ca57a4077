//! The seed's 7 alerts as ringtail ships them (`deploy/base/prometheusrule.yaml`), rendered by
//! `kubectl kustomize` for each overlay: promtool accepts them and passes their unit tests
//! (`deploy/alerts-test.yaml`), they keep the seed's severities and `for` durations, they select
//! the scrape job the ServiceMonitor sets (one value per overlay, `ringtail`, changeable to
//! `alloy`), and every series of ringtail's they query is on a real ringtail's /metrics.
//!
//! Needs `kubectl` and `promtool` (Debian's prometheus package). Without them these tests fail:
//! run `scripts/ensure-deps`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;
use support::monitoring::{
    alert_exprs, deploy_dir, one_of, promql_metric_names, render, render_overlay, rules_file,
    run_tool, sample_names,
};
use support::ShippingRingtail;

const OVERLAYS: [&str; 2] = ["dev", "prod"];

/// The seed's table: (alert, severity, for), in the order of the file.
const SEED_ALERTS: [(&str, &str, &str); 7] = [
    ("RingtailDaemonSetNotRunning", "critical", "5m"),
    ("RingtailPodNotReady", "critical", "5m"),
    ("RingtailLogDeliveryFailures", "high", "10m"),
    ("RingtailPodCrashLooping", "high", "10m"),
    ("RingtailHighMemoryUsage", "warning", "10m"),
    ("RingtailHighCPUUsage", "warning", "10m"),
    ("RingtailSlowLogProcessing", "medium", "15m"),
];

/// The metrics each alert queries. ringtail's own are checked against its /metrics below; the
/// others come from kube-state-metrics and the kubelet's cAdvisor.
const ALERT_METRICS: [(&str, &[&str]); 7] = [
    (
        "RingtailDaemonSetNotRunning",
        &[
            "kube_daemonset_status_desired_number_scheduled",
            "kube_daemonset_status_number_ready",
            "kube_daemonset_status_updated_number_scheduled",
        ],
    ),
    ("RingtailPodNotReady", &["kube_pod_status_ready"]),
    (
        "RingtailLogDeliveryFailures",
        &[
            "loki_write_dropped_entries_total",
            "loki_write_request_duration_seconds_count",
        ],
    ),
    (
        "RingtailPodCrashLooping",
        &["kube_pod_container_status_waiting_reason"],
    ),
    (
        "RingtailHighMemoryUsage",
        &[
            "container_memory_working_set_bytes",
            "kube_pod_container_resource_limits",
            "kube_pod_container_resource_requests",
        ],
    ),
    (
        "RingtailHighCPUUsage",
        &[
            "container_cpu_usage_seconds_total",
            "kube_pod_container_resource_limits",
            "kube_pod_container_resource_requests",
        ],
    ),
    (
        "RingtailSlowLogProcessing",
        &["loki_process_duration_seconds_bucket"],
    ),
];

/// ringtail's own series among them: selected by the scrape job, and exposed by ringtail.
const RINGTAIL_METRICS: [&str; 3] = [
    "loki_process_duration_seconds_bucket",
    "loki_write_dropped_entries_total",
    "loki_write_request_duration_seconds_count",
];

/// How many `job="..."` matchers each alert has (the others select kube-state-metrics' and
/// cAdvisor's series by namespace and container).
const JOB_MATCHERS: [(&str, usize); 2] = [
    ("RingtailLogDeliveryFailures", 3),
    ("RingtailSlowLogProcessing", 1),
];

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v:?}"))
}

fn rules(docs: &[Value]) -> &[Value] {
    one_of(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("the rules of the first group")
}

/// The values of every `job="..."` matcher in `expr`; panics on any other kind of job matcher.
fn job_matchers(expr: &str) -> Vec<String> {
    for other in ["job=~", "job!=", "job!~"] {
        assert!(!expr.contains(other), "{other} in {expr}");
    }
    expr.match_indices("job=\"")
        .map(|(i, m)| {
            let rest = &expr[i + m.len()..];
            rest[..rest.find('"').expect("a closing quote")].to_string()
        })
        .collect()
}

/// The `job` label the ServiceMonitor's relabeling sets.
fn servicemonitor_job(docs: &[Value]) -> String {
    let sm = one_of(docs, "ServiceMonitor");
    let endpoints = sm["spec"]["endpoints"].as_sequence().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    let setting_job: Vec<&Value> = endpoints[0]["relabelings"]
        .as_sequence()
        .expect("relabelings")
        .iter()
        .filter(|r| r["targetLabel"].as_str() == Some("job"))
        .collect();
    assert_eq!(setting_job.len(), 1, "one relabeling sets job");
    let r = setting_job[0];
    assert_eq!(str_of(r, "action"), "replace");
    assert!(r["sourceLabels"].is_null(), "a constant: {r:?}");
    str_of(r, "replacement").to_string()
}

/// Writes the rules file and a copy of `deploy/alerts-test.yaml` (whose `rule_files` names it)
/// into `dir`; returns the paths of both.
fn write_rules_and_tests(docs: &[Value], dir: &Path) -> (PathBuf, PathBuf) {
    let rules = dir.join("ringtail-rules.yaml");
    std::fs::write(&rules, rules_file(docs)).expect("write the rules file");
    let tests = dir.join("alerts-test.yaml");
    std::fs::copy(deploy_dir().join("alerts-test.yaml"), &tests).expect("copy alerts-test.yaml");
    (rules, tests)
}

/// `promtool <args>`: its stdout and stderr together, and whether it succeeded.
fn promtool(args: &[&Path], sub: &[&str]) -> (bool, String) {
    let out = run_tool(Command::new("promtool").args(sub).args(args));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_accepts_the_rules_and_passes_their_unit_tests() {
    for overlay in OVERLAYS {
        let docs = render_overlay(overlay);
        let dir = tempfile::tempdir().expect("tempdir");
        let (rules, tests) = write_rules_and_tests(&docs, dir.path());

        let (ok, out) = promtool(&[&rules], &["check", "rules"]);
        assert!(ok, "{overlay}: promtool check rules:\n{out}");
        assert!(out.contains("SUCCESS: 7 rules found"), "{overlay}:\n{out}");

        let (ok, out) = promtool(&[&tests], &["test", "rules"]);
        assert!(ok, "{overlay}: promtool test rules:\n{out}");
        assert!(out.contains("SUCCESS"), "{overlay}:\n{out}");
    }
}

#[test]
fn the_seven_alerts_keep_the_seed_severities_and_durations() {
    for overlay in OVERLAYS {
        let docs = render_overlay(overlay);
        let pr = one_of(&docs, "PrometheusRule");
        assert_eq!(str_of(&pr["metadata"], "namespace"), "ringtail");
        let groups = pr["spec"]["groups"].as_sequence().expect("groups");
        assert_eq!(groups.len(), 1, "{overlay}: one group");
        assert_eq!(str_of(&groups[0], "name"), "ringtail");

        let got: Vec<(&str, &str, &str)> = rules(&docs)
            .iter()
            .map(|r| {
                let labels = r["labels"].as_mapping().expect("labels");
                assert_eq!(labels.len(), 1, "{overlay}: only severity in {r:?}");
                (
                    str_of(r, "alert"),
                    str_of(&r["labels"], "severity"),
                    str_of(r, "for"),
                )
            })
            .collect();
        assert_eq!(got, SEED_ALERTS, "{overlay}");

        for r in rules(&docs) {
            let alert = str_of(r, "alert");
            let annotations = r["annotations"].as_mapping().expect("annotations");
            let keys: BTreeSet<&str> = annotations.keys().filter_map(Value::as_str).collect();
            assert_eq!(
                keys,
                BTreeSet::from(["description", "runbook_url", "summary"]),
                "{overlay}: {alert}"
            );
            assert_eq!(
                str_of(&r["annotations"], "runbook_url"),
                format!("docs/operations.md#{}", alert.to_lowercase()),
                "{overlay}: {alert}: the runbook section is named after the alert"
            );
            // The anchor exists: a `### <alert>` heading in the operations guide.
            let guide = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
            )
            .expect("docs/operations.md");
            assert!(
                guide.lines().any(|l| l == format!("### {alert}")),
                "docs/operations.md has no runbook section `### {alert}`"
            );
            for key in ["summary", "description"] {
                let text = str_of(&r["annotations"], key);
                assert!(
                    text.len() > 20 && !text.contains("alloy") && !text.contains("Alloy"),
                    "{overlay}: {alert}: {key}: {text:?}"
                );
            }
        }
    }
}

#[test]
fn alerts_select_the_job_the_servicemonitor_sets() {
    for overlay in OVERLAYS {
        let docs = render_overlay(overlay);
        assert_eq!(servicemonitor_job(&docs), "ringtail", "{overlay}");
        assert_job_everywhere(&docs, "ringtail", overlay);
    }
}

/// Every job matcher of the alerts says `job`, and there are as many as the expressions have.
fn assert_job_everywhere(docs: &[Value], job: &str, what: &str) {
    let expected: BTreeMap<&str, usize> = JOB_MATCHERS.into_iter().collect();
    for r in rules(docs) {
        let alert = str_of(r, "alert");
        let found = job_matchers(str_of(r, "expr"));
        let want = vec![job.to_string(); expected.get(alert).copied().unwrap_or(0)];
        assert_eq!(found, want, "{what}: {alert}");
    }
}

#[test]
fn servicemonitor_scrapes_http_metrics_of_the_service_and_labels_the_node() {
    for overlay in OVERLAYS {
        let docs = render_overlay(overlay);
        let sm = one_of(&docs, "ServiceMonitor");
        let svc = one_of(&docs, "Service");
        assert_eq!(str_of(&sm["metadata"], "namespace"), "ringtail");
        // It selects the Service by its labels, in its own namespace.
        let selector = sm["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .expect("matchLabels");
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(
                svc["metadata"]["labels"].get(k),
                Some(v),
                "{overlay}: {k:?}"
            );
        }
        assert!(sm["spec"]["namespaceSelector"].is_null(), "{overlay}");
        let ep = &sm["spec"]["endpoints"][0];
        assert_eq!(str_of(ep, "port"), "http-metrics");
        assert_eq!(
            str_of(&svc["spec"]["ports"][0], "name"),
            "http-metrics",
            "{overlay}: the Service's port of that name"
        );
        assert_eq!(str_of(ep, "path"), "/metrics");
        assert_eq!(str_of(ep, "interval"), "30s");
        let node: Vec<&Value> = ep["relabelings"]
            .as_sequence()
            .expect("relabelings")
            .iter()
            .filter(|r| r["targetLabel"].as_str() == Some("node"))
            .collect();
        assert_eq!(node.len(), 1, "{overlay}");
        assert_eq!(
            node[0]["sourceLabels"],
            serde_yaml::from_str::<Value>("[__meta_kubernetes_pod_node_name]").unwrap()
        );
    }
}

/// A path from directory `from` to `to`, both absolute: kustomize refuses absolute paths to
/// bases and components.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().expect("canonical temp dir");
    let to = to.canonicalize().expect("canonical deploy dir");
    let mut path = PathBuf::new();
    for c in from.components() {
        if matches!(c, Component::Normal(_)) {
            path.push("..");
        }
    }
    path.join(to.strip_prefix("/").expect("absolute"))
}

#[test]
fn an_overlay_renames_the_job_in_one_place() {
    // An overlay as deploy/README.md#monitoring describes it, for a platform that keeps Alloy's
    // job name: prod's scrape-job.yaml with `job: alloy`, and nothing else changed.
    let dir = tempfile::tempdir().expect("tempdir");
    let deploy = relative(dir.path(), &deploy_dir());
    let prod = std::fs::read_to_string(deploy_dir().join("overlays/prod/scrape-job.yaml"))
        .expect("read prod's scrape-job.yaml");
    assert_eq!(prod.matches("job: ringtail").count(), 1);
    std::fs::write(
        dir.path().join("scrape-job.yaml"),
        prod.replace("job: ringtail", "job: alloy"),
    )
    .expect("write scrape-job.yaml");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources:\n  - {base}\n  - scrape-job.yaml\ncomponents:\n  - {component}\n",
            base = deploy.join("base").display(),
            component = deploy.join("components/scrape-job").display(),
        ),
    )
    .expect("write kustomization.yaml");

    let docs = render(dir.path());
    assert_eq!(servicemonitor_job(&docs), "alloy");
    assert_job_everywhere(&docs, "alloy", "job: alloy");
    // The value is local config: no ConfigMap of that name is applied.
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"].as_str() == Some("ringtail-scrape-job")),
        "the scrape-job ConfigMap is not rendered"
    );
    // Nothing else in the rules moved: the replacement hit the job matchers and only them.
    let prod_exprs =
        alert_exprs(&serde_yaml::from_str(&rules_file(&render_overlay("prod"))).unwrap());
    let alloy_exprs: Vec<(String, String)> =
        alert_exprs(&serde_yaml::from_str(&rules_file(&docs)).unwrap())
            .into_iter()
            .map(|(a, e)| (a, e.replace("job=\"alloy\"", "job=\"ringtail\"")))
            .collect();
    assert_eq!(alloy_exprs, prod_exprs);

    // And promtool still reads them.
    let rules = dir.path().join("ringtail-rules.yaml");
    std::fs::write(&rules, rules_file(&docs)).expect("write the rules");
    let (ok, out) = promtool(&[&rules], &["check", "rules"]);
    assert!(ok, "promtool check rules:\n{out}");
}

#[test]
fn every_ringtail_series_the_alerts_query_is_on_its_metrics() {
    let docs = render_overlay("prod");
    let text = rules_file(&docs);
    let exprs = alert_exprs(&serde_yaml::from_str(&text).expect("the rules are YAML"));
    let got: Vec<(String, BTreeSet<String>)> = exprs
        .iter()
        .map(|(alert, expr)| (alert.clone(), promql_metric_names(expr)))
        .collect();
    let want: Vec<(String, BTreeSet<String>)> = ALERT_METRICS
        .iter()
        .map(|(alert, names)| {
            (
                alert.to_string(),
                names.iter().map(|n| n.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(got, want, "the metrics each alert queries");

    // ringtail's own: exactly those of the alerts that select the job.
    let selecting_job: BTreeSet<&str> = JOB_MATCHERS.iter().map(|(a, _)| *a).collect();
    let ringtail_side: BTreeSet<String> = got
        .iter()
        .filter(|(alert, _)| selecting_job.contains(alert.as_str()))
        .flat_map(|(_, names)| names.iter().cloned())
        .collect();
    assert_eq!(
        ringtail_side,
        RINGTAIL_METRICS.iter().map(|n| n.to_string()).collect()
    );

    let ringtail = ShippingRingtail::start(3);
    let exposed = sample_names(&ringtail.metrics());
    for name in RINGTAIL_METRICS {
        assert!(
            exposed.contains(name),
            "{name} is not on ringtail's /metrics; it has: {exposed:?}"
        );
    }
}
