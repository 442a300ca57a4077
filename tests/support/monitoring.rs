//! What the monitoring tests share (`alerts`, `dashboard`, `prometheus`): the manifests as
//! `kubectl kustomize` renders them, the rules file promtool and Prometheus read, the metric
//! names a PromQL expression uses, and a ringtail that has shipped something, so that every
//! series it can expose is on its /metrics.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use super::cri::{ContainerLog, PodDir, Stream};
use super::proc::{free_port, metric_sum, metrics, pods_only_config, Ringtail};
use super::receiver::LokiReceiver;
use super::wait_until;

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Runs a tool the tests need, panicking with what to do when it is not installed: the tools
/// are system packages (`scripts/ensure-deps`), and a test that skipped itself without them
/// would pass having checked nothing.
pub fn run_tool(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "{program} is not installed: run scripts/ensure-deps (kubectl, and Debian's \
             prometheus package for promtool and prometheus)"
        ),
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

/// `kubectl kustomize <dir>`, as text.
pub fn kustomize(dir: &Path) -> String {
    let out = run_tool(Command::new("kubectl").arg("kustomize").arg(dir));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed ({}):\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}

/// `kubectl kustomize <dir>`, one value per document.
pub fn render(dir: &Path) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&kustomize(dir))
        .map(|doc| Value::deserialize(doc).expect("kustomize output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize deploy/overlays/<overlay>`.
pub fn render_overlay(overlay: &str) -> Vec<Value> {
    render(&deploy_dir().join("overlays").join(overlay))
}

/// The one object of `kind` in `docs`.
pub fn one_of<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

/// The PrometheusRule's `spec` as a plain Prometheus rules file (`groups:`), which is what
/// promtool and Prometheus read: the Prometheus Operator does the same extraction.
pub fn rules_file(docs: &[Value]) -> String {
    let spec = one_of(docs, "PrometheusRule")
        .get("spec")
        .expect("the PrometheusRule has a spec");
    serde_yaml::to_string(spec).expect("serialise the rules")
}

/// Every `(alert, expr)` of a rules file's groups.
pub fn alert_exprs(rules: &Value) -> Vec<(String, String)> {
    let groups = rules["groups"].as_sequence().expect("groups is a list");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules is a list"))
        .map(|r| {
            let s = |k: &str| {
                r[k].as_str()
                    .unwrap_or_else(|| panic!("{k} of {r:?}"))
                    .to_string()
            };
            (s("alert"), s("expr"))
        })
        .collect()
}

/// The names of the samples in a Prometheus text exposition: `x_total`, `x_bucket`, `x_count`,
/// as a query selects them (not the family names of the `# TYPE` lines).
pub fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect()
}

/// PromQL keywords that are followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL words that look like identifiers but are not metric names: operators, and the
/// aggregations, which may come before their parenthesis (`max by (pod) (x)`).
const KEYWORDS: [&str; 20] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names an expression selects: the identifiers that are neither functions,
/// aggregations nor keywords, outside label matchers (`{...}`), label lists (`by (...)`),
/// ranges (`[5m]`), strings and Grafana variables (`$job`, `${node}`, `$__rate_interval`).
/// Enough for the expressions in deploy/: no `{__name__=...}` selectors there.
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Skips from an opening bracket to its closing one, over strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i),
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i) + 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(i, '{', '}');
            } else {
                while i < chars.len() && is_part(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (0.99, 1e3, 5m).
            while i < chars.len() && (is_part(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if chars.get(j) == Some(&'(') {
                    i = skip_group(j, '(', ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || chars.get(j) == Some(&'(') {
                // A keyword, or a function or aggregation (called).
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index of the quote that closes the string opening at `open`.
fn skip_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// A real ringtail that has read a pod log and shipped it to a [`LokiReceiver`]: by then every
/// series it exposes (request durations by status code, bytes read by source, ...) is on its
/// /metrics. Fields drop in order: ringtail is killed before the receiver and the directory go.
pub struct ShippingRingtail {
    pub rt: Ringtail,
    pub rx: LokiReceiver,
    /// The metrics port (`server.listen` on 127.0.0.1).
    pub port: u16,
    /// Lines written to the pod log, all of them stored by the receiver.
    pub lines: usize,
    log: ContainerLog,
    pub dir: tempfile::TempDir,
}

impl ShippingRingtail {
    /// Starts ringtail on a pod log (`pods_only_config`), writes `lines` lines to it, and waits
    /// until the receiver stored them all and `loki_write_sent_entries_total` says so.
    pub fn start(lines: usize) -> ShippingRingtail {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods = dir.path().join("pods");
        let log = PodDir::new(&pods, "default", "web-0", "0b1c2d3e").container("web");
        let rx = LokiReceiver::start();
        let port = free_port();
        let config = pods_only_config(&dir.path().join("data"), &pods, &rx.url(), port);
        let mut rt = Ringtail::start(&config, &dir.path().join("run"));
        assert!(
            rt.wait_ready(port, Duration::from_secs(10)),
            "ringtail is not ready\n{}",
            rt.logs()
        );
        let mut shipping = ShippingRingtail {
            rt,
            rx,
            port,
            lines: 0,
            log,
            dir,
        };
        shipping.ship(lines);
        shipping
    }

    /// Appends `n` lines to the pod log and waits until the receiver stored them and
    /// `loki_write_sent_entries_total` counts them.
    pub fn ship(&mut self, n: usize) {
        for i in self.lines..self.lines + n {
            self.log
                .write_line(Stream::Stdout, format!("GET /health {i} 200"));
        }
        self.lines += n;
        let lines = self.lines;
        assert!(
            self.rx.wait_for_entries(lines, Duration::from_secs(30)),
            "{} of {lines} entries arrived\n{}",
            self.rx.entry_count(),
            self.rt.logs()
        );
        // Counted once Loki answered, a moment after the receiver stored them.
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || {
                metric_sum(&metrics(port), "loki_write_sent_entries_total") == lines as f64
            }),
            "loki_write_sent_entries_total never reached {lines}:\n{}",
            metrics(port)
        );
    }

    /// Its /metrics, now.
    pub fn metrics(&self) -> String {
        metrics(self.port)
    }
}
