//! A real Prometheus (Debian's package, 2.42) scraping a real ringtail that ships to a
//! [`LokiReceiver`]: the series arrive under the scrape job with Alloy's labels (`host`, and
//! `tenant`, which an empty tenant leaves out), with the values ringtail counted; and the shipped
//! alert rules load, evaluate on those series without error, and stay quiet on a healthy
//! ringtail.
//!
//! Needs `prometheus` (and `kubectl` for the rules). Without them these tests fail: run
//! `scripts/ensure-deps`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::monitoring::{alert_exprs, render_overlay, rules_file};
use support::{http, metric_value, metrics, wait_until, ShippingRingtail};

const WAIT: Duration = Duration::from_secs(30);

/// A `prometheus` server on loopback, scraping one ringtail every second. Killed on drop; its
/// log is printed when the test is panicking.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Writes `prometheus.yml` (and `rules`, if any, as `ringtail-rules.yaml`) into `dir` and
    /// starts Prometheus on it; returns once it answers `/-/ready`.
    fn start(dir: &Path, ringtail_port: u16, rules: Option<&str>) -> Prometheus {
        let mut config = format!(
            "global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ringtail
    scrape_interval: 1s
    static_configs:
      - targets: ['127.0.0.1:{ringtail_port}']
"
        );
        if let Some(rules) = rules {
            std::fs::write(dir.join("ringtail-rules.yaml"), rules).expect("write the rules");
            config.push_str("rule_files:\n  - ringtail-rules.yaml\n");
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = support::free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create prometheus.log"))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "prometheus is not installed: run scripts/ensure-deps (Debian's prometheus package)"
            ),
            Err(e) => panic!("cannot run prometheus: {e}"),
        };
        let mut p = Prometheus { child, port, log };
        let ready = wait_until(WAIT, || {
            p.exited() || http::get(p.port, "/-/ready").is_ok_and(|r| r.status == 200)
        });
        assert!(
            ready && !p.exited(),
            "prometheus did not start\n{}",
            p.log_text()
        );
        p
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: its `data`, once the answer says `success`.
    fn api(&self, path: &str) -> Value {
        let resp = http::get(self.port, &format!("/api/v1/{path}"))
            .unwrap_or_else(|e| panic!("GET /api/v1/{path}: {e}"));
        let body: Value = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("/api/v1/{path}: {e}: {}", resp.text()));
        assert_eq!(
            (resp.status, body["status"].as_str()),
            (200, Some("success")),
            "/api/v1/{path}: {body}"
        );
        body["data"].clone()
    }

    /// An instant query: each series' labels and value.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, String)> {
        let data = self.api(&format!("query?query={}", encode(promql)));
        assert_eq!(data["resultType"], "vector", "{promql}");
        data["result"]
            .as_array()
            .expect("a result list")
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("a label value").to_string()))
                    .collect();
                let value = s["value"][1].as_str().expect("a value").to_string();
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` until `done` accepts its result; returns the last result either way.
    fn query_until(
        &self,
        promql: &str,
        mut done: impl FnMut(&[(BTreeMap<String, String>, String)]) -> bool,
    ) -> Vec<(BTreeMap<String, String>, String)> {
        let mut last = Vec::new();
        wait_until(WAIT, || {
            last = self.query(promql);
            done(&last)
        });
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- prometheus log ----\n{}\n----", self.log_text());
        }
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn prometheus_scrapes_ringtails_series_under_its_job_with_alloys_labels() {
    let ringtail = ShippingRingtail::start(7);
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = Prometheus::start(dir.path(), ringtail.port, None);
    let instance = format!("127.0.0.1:{}", ringtail.port);
    let host = format!("127.0.0.1:{}", ringtail.rx.port());

    // On /metrics the empty tenant is printed, tenant=""; Prometheus treats an empty label as
    // an absent one, so the stored series has no tenant label at all.
    let text = metrics(ringtail.port);
    let exposed = format!("loki_write_sent_entries_total{{host=\"{host}\",tenant=\"\"}} 7");
    assert!(text.contains(&exposed), "{exposed} not in\n{text}");

    let stored = ringtail.rx.entry_count();
    assert_eq!(stored, 7);
    let got = prom.query_until("loki_write_sent_entries_total", |r| {
        r.len() == 1 && r[0].1 == stored.to_string()
    });
    assert_eq!(
        got,
        [(
            labels(&[
                ("__name__", "loki_write_sent_entries_total"),
                ("host", &host),
                ("instance", &instance),
                ("job", "ringtail"),
            ]),
            stored.to_string()
        )]
    );

    // Alloy's five drop reasons, there from the start at 0.
    let got: BTreeSet<(BTreeMap<String, String>, String)> = prom
        .query("loki_write_dropped_entries_total")
        .into_iter()
        .collect();
    let want: BTreeSet<(BTreeMap<String, String>, String)> = [
        "ingester_error",
        "rate_limited",
        "stream_limited",
        "line_too_long",
        "queue_is_full",
    ]
    .into_iter()
    .map(|reason| {
        (
            labels(&[
                ("__name__", "loki_write_dropped_entries_total"),
                ("host", &host),
                ("instance", &instance),
                ("job", "ringtail"),
                ("reason", reason),
            ]),
            "0".to_string(),
        )
    })
    .collect();
    assert_eq!(got, want);

    // The processing histogram reaches past the alert's 1 s, up to 60 s; `le` as ringtail
    // prints it (Prometheus 2 stores it as scraped).
    let les: BTreeSet<String> = prom
        .query("loki_process_duration_seconds_bucket")
        .into_iter()
        .map(|(l, _)| {
            assert_eq!(
                (l["job"].as_str(), l["instance"].as_str()),
                ("ringtail", instance.as_str())
            );
            l["le"].clone()
        })
        .collect();
    let want: BTreeSet<String> = [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
        "2.5", "5.0", "10.0", "30.0", "60.0", "+Inf",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(les, want);
    // What Prometheus stored is what ringtail exposes (idle now, so its counters hold still).
    // Observed once per chunk of lines read together, so there are between 1 and 7.
    let text = metrics(ringtail.port);
    let count = metric_value(&text, "loki_process_duration_seconds_count")
        .unwrap_or_else(|| panic!("no loki_process_duration_seconds_count in\n{text}"));
    assert!((1.0..=stored as f64).contains(&count), "{count}");
    assert_eq!(
        prom.query_until("loki_process_duration_seconds_count", |r| r.len() == 1
            && r[0].1 == count.to_string()),
        [(
            labels(&[
                ("__name__", "loki_process_duration_seconds_count"),
                ("instance", &instance),
                ("job", "ringtail"),
            ]),
            count.to_string()
        )]
    );
}

#[test]
fn the_shipped_rules_evaluate_on_ringtails_series_and_stay_quiet() {
    let mut ringtail = ShippingRingtail::start(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_file(&render_overlay("prod"));
    let prom = Prometheus::start(dir.path(), ringtail.port, Some(&rules));

    // Lines shipped while Prometheus scrapes, so that the rates are not all 0.
    prom.query_until("loki_write_sent_entries_total", |r| r.len() == 1);
    ringtail.ship(20);
    let total = ringtail.lines.to_string();
    prom.query_until("loki_write_sent_entries_total", |r| {
        r.len() == 1 && r[0].1 == total
    });

    // The parts of the ringtail-side alerts that see healthy series: the successful pushes
    // (which keep RingtailLogDeliveryFailures quiet) and the p99 processing time (under 1 s).
    let exprs: BTreeMap<String, String> = alert_exprs(&serde_yaml::from_str(&rules).unwrap())
        .into_iter()
        .collect();
    let pushes_ok = "sum by (namespace, pod, node, host, tenant) (increase(loki_write_request_duration_seconds_count{job=\"ringtail\", status_code=~\"2..\"}[2m]))";
    assert!(exprs["RingtailLogDeliveryFailures"].contains(pushes_ok));
    let got = prom.query(pushes_ok);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].0,
        labels(&[("host", &format!("127.0.0.1:{}", ringtail.rx.port()))])
    );
    let increase: f64 = got[0].1.parse().expect("a number");
    assert!(increase > 0.0, "pushes that succeeded: {increase}");

    let p99 = "histogram_quantile(0.99, sum by (namespace, pod, node, le) (rate(loki_process_duration_seconds_bucket{job=\"ringtail\"}[5m])))";
    assert!(exprs["RingtailSlowLogProcessing"].starts_with(p99));
    let got = prom.query(p99);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, BTreeMap::new());
    let seconds: f64 = got[0].1.parse().expect("a number");
    assert!(
        seconds > 0.0 && seconds < 1.0,
        "p99 processing time on a healthy ringtail: {seconds}"
    );

    // Every rule evaluated, without error, and none is pending or firing.
    let mut states = BTreeMap::new();
    let evaluated = wait_until(WAIT, || {
        let data = prom.api("rules");
        let rules: Vec<&Value> = data["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules"))
            .collect();
        states = rules
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_string(),
                    (
                        r["health"].as_str().unwrap_or("").to_string(),
                        r["lastError"].as_str().unwrap_or("").to_string(),
                        r["state"].as_str().unwrap_or("").to_string(),
                    ),
                )
            })
            .collect();
        rules.len() == 7 && rules.iter().all(|r| r["health"] != "unknown")
    });
    assert!(evaluated, "rules not all evaluated: {states:?}");
    let ok = (String::from("ok"), String::new(), String::from("inactive"));
    let want: BTreeMap<String, (String, String, String)> = exprs
        .keys()
        .map(|alert| (alert.clone(), ok.clone()))
        .collect();
    assert_eq!(states, want);
}
