//! RKE2's daemon logs end to end: kubelet.log (klog) and containerd.log (logrus) tailed by the
//! real binary, with lumberjack rename rotation, klog's truncation in place, and paths that do
//! not exist yet.

mod support;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    dir: tempfile::TempDir,
    rx: LokiReceiver,
    port: u16,
    /// A `tail:` block added to the config (the rotation scenario runs with and without inotify).
    tail: &'static str,
}

impl Node {
    fn new() -> Node {
        Node::with_tail("")
    }

    fn with_tail(tail: &'static str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("pods")).unwrap();
        Node {
            dir,
            rx: LokiReceiver::start(),
            port: free_port(),
            tail,
        }
    }

    fn kubelet_log(&self) -> PathBuf {
        self.dir.path().join("agent/logs/kubelet.log")
    }

    fn containerd_log(&self) -> PathBuf {
        self.dir.path().join("agent/containerd/containerd.log")
    }

    /// Starts ringtail with klog times read in UTC.
    fn start(&self, run: &str) -> Ringtail {
        self.start_in_zone(run, "UTC")
    }

    /// Starts ringtail with `logs.rke2.timezone: <zone>`.
    fn start_in_zone(&self, run: &str, zone: &str) -> Ringtail {
        let cfg = pods_only_config(
            &self.dir.path().join("data"),
            &self.dir.path().join("pods"),
            &self.rx.url(),
            self.port,
        )
        .replace(
            "  rke2:\n    enabled: false\n",
            &format!(
                "  rke2:\n    enabled: true\n    kubelet_log: {}\n    containerd_log: {}\n    \
                 timezone: {zone:?}\n",
                self.kubelet_log().display(),
                self.containerd_log().display()
            ),
        );
        assert!(cfg.contains("kubelet_log"), "{cfg}");
        let cfg = cfg + self.tail;
        let run_dir = self.dir.path().join(run);
        fs::create_dir_all(&run_dir).unwrap();
        let mut rt = Ringtail::start(&cfg, &run_dir);
        assert!(
            rt.wait_ready(self.port, Duration::from_secs(10)),
            "{}",
            rt.logs()
        );
        rt
    }
}

fn append(path: &Path, lines: &[String]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        f.write_all(l.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

fn labels(kind: &str) -> BTreeMap<String, String> {
    [("source", "rke2"), ("type", kind), ("node", "test-node")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("job".to_string(), format!("rke2/{kind}"))])
        .collect()
}

/// The current year, as ringtail gives it to klog lines.
fn year() -> i64 {
    let now = support::cri::unix_now_ns();
    let s = format_rfc3339nano(now, 0);
    s[..4].parse().unwrap()
}

#[test]
fn klog_and_logrus_lines_with_levels_timestamps_and_labels() {
    let n = Node::new();
    let klog = [
        "I1125 10:00:00.123456    1234 kubelet.go:42] Started kubelet",
        "W1125 10:00:01.000001    1234 pod_workers.go:1] slow",
        "E1125 10:00:02.5    bad fraction is not a klog header",
        "E1125 10:00:03.000000    1234 kuberuntime.go:9] failed",
        "F1125 10:00:04.999999    1234 server.go:1] fatal",
    ]
    .map(String::from);
    let logrus = [
        r#"time="2026-11-25T10:00:00.123456789Z" level=info msg="starting containerd" revision=abc"#,
        r#"time="2026-11-25T10:00:01Z" level=warning msg="x""#,
        r#"time="2026-11-25T11:00:02+01:00" level=error msg="failed to y" error="z""#,
        "plain line with neither",
    ]
    .map(String::from);
    append(&n.kubelet_log(), &klog);
    append(&n.containerd_log(), &logrus);
    let mut rt = n.start("run1");
    assert!(
        n.rx.wait_for_entries(9, WAIT),
        "{}\n{}",
        n.rx.summary(),
        rt.logs()
    );
    type Labels = BTreeMap<String, String>;
    let got: BTreeMap<String, (Labels, i64, Labels)> =
        n.rx.entries()
            .into_iter()
            .map(|e| (e.line, (e.labels, e.ts_ns, e.metadata)))
            .collect();
    let y = year();
    let ns = |s: &str| parse_rfc3339nano(s).unwrap();
    let level = |l: &str| BTreeMap::from([("level".to_string(), l.to_string())]);
    let want = [
        (
            &klog[0],
            "kubelet",
            Some(ns(&format!("{y}-11-25T10:00:00.123456Z"))),
            Some("info"),
        ),
        (
            &klog[1],
            "kubelet",
            Some(ns(&format!("{y}-11-25T10:00:01.000001Z"))),
            Some("warn"),
        ),
        // No header: the previous line's time (a continuation line), not the read time.
        (
            &klog[2],
            "kubelet",
            Some(ns(&format!("{y}-11-25T10:00:01.000001Z"))),
            None,
        ),
        (
            &klog[3],
            "kubelet",
            Some(ns(&format!("{y}-11-25T10:00:03Z"))),
            Some("error"),
        ),
        (
            &klog[4],
            "kubelet",
            Some(ns(&format!("{y}-11-25T10:00:04.999999Z"))),
            Some("critical"),
        ),
        (
            &logrus[0],
            "containerd",
            Some(ns("2026-11-25T10:00:00.123456789Z")),
            Some("info"),
        ),
        (
            &logrus[1],
            "containerd",
            Some(ns("2026-11-25T10:00:01Z")),
            Some("warn"),
        ),
        (
            &logrus[2],
            "containerd",
            Some(ns("2026-11-25T10:00:02Z")),
            Some("error"),
        ),
        (
            &logrus[3],
            "containerd",
            Some(ns("2026-11-25T10:00:02Z")),
            None,
        ),
    ];
    assert_eq!(got.len(), want.len());
    let now = support::cri::unix_now_ns();
    for (line, kind, ts, lvl) in want {
        let (l, t, m) = &got[line.as_str()];
        assert_eq!(l, &labels(kind), "{line}");
        match ts {
            Some(ts) => assert_eq!(*t, ts, "{line}"),
            // No timestamp in the line: the time it was read.
            None => assert!((now - t).abs() < 60_000_000_000, "{line}: {t}"),
        }
        assert_eq!(m, &lvl.map(level).unwrap_or_default(), "{line}");
    }
    let m = metrics(n.port);
    assert_eq!(
        metric_value(&m, "ringtail_read_lines_total{source=\"rke2\"}"),
        Some(9.0),
        "{m}"
    );
    stop(&mut rt);
}

/// A node in New York's zone: kubelet's klog times are local (UTC-5 in November, UTC-4 in
/// July), read with the zone file the DaemonSet mounts at /etc/localtime (here the same TZif
/// file, named by `logs.rke2.timezone`). containerd's logrus times carry their zone and stay.
#[test]
fn klog_times_are_read_in_the_nodes_zone() {
    let n = Node::new();
    let zone = n.dir.path().join("localtime");
    let tzif = fs::read("/usr/share/zoneinfo/America/New_York")
        .expect("the tzdata package (scripts/ensure-deps installs it)");
    fs::write(&zone, tzif).unwrap();
    let klog = [
        "I1125 05:00:00.250000    1234 kubelet.go:42] winter, UTC-5",
        "W0701 06:00:00.000000    1234 kubelet.go:43] summer, UTC-4",
    ]
    .map(String::from);
    append(&n.kubelet_log(), &klog);
    append(
        &n.containerd_log(),
        &[r#"time="2026-11-25T10:00:00Z" level=info msg="zoned already""#.to_string()],
    );
    let mut rt = n.start_in_zone("run1", &zone.to_string_lossy());
    assert!(
        n.rx.wait_for_entries(3, WAIT),
        "{}\n{}",
        n.rx.summary(),
        rt.logs()
    );
    let got: BTreeMap<String, i64> =
        n.rx.entries()
            .into_iter()
            .map(|e| (e.line, e.ts_ns))
            .collect();
    let y = year();
    let ns = |s: &str| parse_rfc3339nano(s).unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[&klog[0]], ns(&format!("{y}-11-25T10:00:00.25Z")));
    assert_eq!(got[&klog[1]], ns(&format!("{y}-07-01T10:00:00Z")));
    assert_eq!(
        got[r#"time="2026-11-25T10:00:00Z" level=info msg="zoned already""#],
        ns("2026-11-25T10:00:00Z")
    );
    assert!(
        rt.logs().contains("read in zone"),
        "the zone in use is logged at start\n{}",
        rt.logs()
    );
    stop(&mut rt);

    // A zone that does not exist is a config error naming the key, and ringtail does not start.
    let cfg = n.dir.path().join("bad.yaml");
    fs::write(
        &cfg,
        "node_name: n\nlogs:\n  rke2:\n    enabled: true\n    timezone: Mars/Olympus\n",
    )
    .unwrap();
    let out = run_cli(
        &["check-config", &cfg.to_string_lossy()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("line 5: logs.rke2.timezone") && out.stderr.contains("Mars/Olympus"),
        "{}",
        out.stderr
    );
}

#[test]
fn containerd_rename_rotation_and_kubelet_truncation_under_write_lose_nothing_with_inotify() {
    containerd_rename_rotation_and_kubelet_truncation_under_write_lose_nothing(
        "tail: { inotify: true }\n",
    );
}

#[test]
fn containerd_rename_rotation_and_kubelet_truncation_under_write_lose_nothing_polling() {
    containerd_rename_rotation_and_kubelet_truncation_under_write_lose_nothing(
        "tail: { inotify: false }\n",
    );
}

fn containerd_rename_rotation_and_kubelet_truncation_under_write_lose_nothing(tail: &'static str) {
    let n = Node::with_tail(tail);
    let mut want: Vec<String> = Vec::new();
    let mut seq = 0;
    let mut batch = |kind: &str, count: usize, want: &mut Vec<String>| -> Vec<String> {
        (0..count)
            .map(|_| {
                seq += 1;
                let l = match kind {
                    "kubelet" => format!("I1125 10:00:00.000000 1 x.go:1] kubelet line {seq}"),
                    _ => format!(
                        r#"time="2026-11-25T10:00:00Z" level=info msg="containerd line {seq}""#
                    ),
                };
                want.push(l.clone());
                l
            })
            .collect()
    };
    append(&n.containerd_log(), &batch("containerd", 200, &mut want));
    append(&n.kubelet_log(), &batch("kubelet", 200, &mut want));
    let mut rt = n.start("run1");
    for round in 0..3 {
        // lumberjack: rename to a timestamped backup; the daemon keeps its handle until it
        // opens the new file, so some lines land in the renamed one.
        let mut old = File::options()
            .append(true)
            .open(n.containerd_log())
            .unwrap();
        let backup = n
            .containerd_log()
            .with_file_name(format!("containerd-2026-11-25T10-00-0{round}.000.log"));
        fs::rename(n.containerd_log(), &backup).unwrap();
        for l in batch("containerd", 50, &mut want) {
            writeln!(old, "{l}").unwrap();
        }
        drop(old);
        append(&n.containerd_log(), &batch("containerd", 100, &mut want));
        // klog --log-file: the file is truncated in place once everything in it was read.
        assert!(
            n.rx.wait_for_entries(want.len() - 150, WAIT),
            "{}",
            rt.logs()
        );
        File::create(n.kubelet_log()).unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        append(&n.kubelet_log(), &batch("kubelet", 100, &mut want));
        // lumberjack compresses old backups.
        if round > 0 {
            let prev = n.containerd_log().with_file_name(format!(
                "containerd-2026-11-25T10-00-0{}.000.log",
                round - 1
            ));
            let status = std::process::Command::new("gzip")
                .arg(&prev)
                .status()
                .unwrap();
            assert!(status.success());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        n.rx.wait_for_entries(want.len(), WAIT),
        "{} of {}\n{}",
        n.rx.entry_count(),
        want.len(),
        rt.logs()
    );
    n.rx.wait_quiet(Duration::from_millis(800));
    let mut got = n.rx.lines();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every line once");
    let m = metrics(n.port);
    assert_eq!(
        metric_value(&m, "ringtail_file_events_total{event=\"truncated\"}"),
        Some(3.0),
        "{m}"
    );
    stop(&mut rt);
}

/// lumberjack compresses a backup as soon as it rotates (RKE2's containerd.log): a rotation
/// while ringtail is down leaves the unread lines only in `containerd-<time>.log.gz`, which
/// ringtail finds beside the live file and ships from its position on.
#[test]
fn a_containerd_backup_compressed_while_down_is_recovered() {
    let n = Node::new();
    let line =
        |i: usize| format!(r#"time="2026-11-25T10:00:00Z" level=info msg="containerd line {i}""#);
    let first: Vec<String> = (0..300).map(line).collect();
    append(&n.containerd_log(), &first);
    let mut rt = n.start("run1");
    assert!(n.rx.wait_for_entries(300, WAIT), "{}", rt.logs());
    stop(&mut rt);

    let down: Vec<String> = (300..500).map(line).collect();
    append(&n.containerd_log(), &down);
    let backup = n
        .containerd_log()
        .with_file_name("containerd-2026-11-25T10-00-00.000.log");
    fs::rename(n.containerd_log(), &backup).unwrap();
    let after: Vec<String> = (500..600).map(line).collect();
    append(&n.containerd_log(), &after);
    let status = std::process::Command::new("gzip")
        .arg(&backup)
        .status()
        .unwrap();
    assert!(status.success() && !backup.exists());

    let mut rt = n.start("run2");
    assert!(n.rx.wait_for_entries(600, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(800));
    let mut got = n.rx.lines();
    got.sort();
    let mut want: Vec<String> = first.into_iter().chain(down).chain(after).collect();
    want.sort();
    assert_eq!(got, want, "every line once");
    let entries = n.rx.entries();
    assert!(entries.iter().all(|e| e.labels == labels("containerd")));
    let m = metrics(n.port);
    assert_eq!(
        metric_value(&m, "ringtail_recovered_lines_total"),
        Some(200.0),
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn a_missing_rke2_path_is_waited_for_quietly() {
    let n = Node::new();
    let mut rt = n.start("run1");
    std::thread::sleep(Duration::from_millis(1500));
    let err = rt.stderr_text();
    assert_eq!(
        err.matches("waiting for").count(),
        2,
        "one info line per path\n{err}"
    );
    assert!(
        !err.contains("level=warn") && !err.contains("level=error"),
        "{err}"
    );
    // The node becomes an RKE2 node: the file is picked up.
    append(
        &n.kubelet_log(),
        &["I1125 10:00:00.000000 1 x.go:1] late".to_string()],
    );
    assert!(n.rx.wait_for_entries(1, WAIT), "{}", rt.logs());
    stop(&mut rt);
}
