//! `ringtail tap`: against a running ringtail (its `/tap` endpoint, loopback only), and in the
//! foreground from a config (ships nothing, disturbs nothing). What it prints is compared line by
//! line with what was written, in the stdout sink's JSON.

mod support;

use std::fs::{self, File};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A `ringtail tap ...` child whose stdout and stderr go to files.
struct TapProc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl TapProc {
    fn start(dir: &Path, args: &[&str]) -> TapProc {
        TapProc::start_with_env(dir, args, &[])
    }

    fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> TapProc {
        fs::create_dir_all(dir).unwrap();
        let (out, err) = (dir.join("tap.stdout"), dir.join("tap.stderr"));
        let child = Command::new(bin_path())
            .arg("tap")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("NODE_NAME", "test-node")
            .spawn()
            .unwrap();
        TapProc { child, out, err }
    }

    fn lines(&self) -> Vec<Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    fn wait_lines(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.lines();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for TapProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the tap prints for a pod line (stdout sink JSON).
fn pod_json(ns: &str, pod: &str, container: &str, ts: i64, line: &str) -> Value {
    json!({
        "labels": {"container": container, "job": format!("{ns}/{container}"),
                   "namespace": ns, "node": "test-node", "pod": pod},
        "ts": format_rfc3339nano(ts, 0),
        "line": line,
        "metadata": {"stream": "stdout"},
    })
}

#[test]
fn tap_shows_what_a_running_ringtail_sends_filtered_and_only_to_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let (rx, port) = (LokiReceiver::start(), free_port());
    let pods = tmp.path().join("pods");
    fs::create_dir_all(&pods).unwrap();
    let secret = tmp.path().join("token");
    fs::write(&secret, "s3cr3t-bearer-token\n").unwrap();
    let cfg = pods_only_config(&tmp.path().join("data"), &pods, &rx.url(), port)
        .replace("127.0.0.1:", "0.0.0.0:")
        .replace(
            "  timeout: 5s\n",
            &format!("  timeout: 5s\n  bearer_token_file: {}\n", secret.display()),
        );
    let mut rt = Ringtail::start(&cfg, &tmp.path().join("run"));
    assert!(
        rt.wait_ready(port, Duration::from_secs(10)),
        "{}",
        rt.logs()
    );
    let tap = TapProc::start(
        &tmp.path().join("tap"),
        &[
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--source",
            "pods",
            "--match",
            "namespace=emojivoto",
        ],
    );
    let deadline = Instant::now() + WAIT;
    while metric_value(&metrics(port), "ringtail_tap_clients") != Some(1.0) {
        assert!(Instant::now() < deadline, "{}", tap.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut web = PodDir::new(&pods, "emojivoto", "web-1", "u1").container("web");
    let mut other = PodDir::new(&pods, "shop", "cart-1", "u2").container("cart");
    let mut want = Vec::new();
    for i in 0..5 {
        let line = format!("GET /{i} 200");
        let ts = web.write_line(Stream::Stdout, &line);
        want.push(pod_json("emojivoto", "web-1", "web", ts, &line));
        other.write_line(Stream::Stdout, format!("not tapped {i}"));
    }
    assert!(rx.wait_for_entries(10, WAIT), "{}", rt.logs());
    let got = tap.wait_lines(5);
    assert_eq!(got, want, "{}", tap.stderr());

    // Only loopback clients: the same port reached through another local address is refused.
    let local_ip = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.255:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .expect("a non-loopback local address");
    assert!(!local_ip.is_loopback());
    let mut c = TcpStream::connect((local_ip, port)).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"GET /tap HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains("loopback"), "{answer}");

    // A bad filter: the client refuses it (exit 2, with the valid values), and so does the
    // server for a client that sends one anyway (400).
    let bad = run_cli(
        &[
            "tap",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--source",
            "files",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(bad.status.and_then(|s| s.code()), Some(2), "{bad:?}");
    assert!(
        bad.stderr.contains("pods, rke2, journal, events"),
        "{bad:?}"
    );
    let meta = run_cli(
        &[
            "tap",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--match",
            "level=error",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(meta.status.and_then(|s| s.code()), Some(2), "{meta:?}");
    assert!(meta.stderr.contains("structured metadata"), "{meta:?}");
    for query in ["sauce=pods", "source=files", "match=%zz"] {
        let r = support::http::get(port, &format!("/tap?{query}")).unwrap();
        assert_eq!(r.status, 400, "{query}: {}", r.text());
    }

    // No secret in the tap, the metrics or the logs.
    let tapped = fs::read_to_string(&tap.out).unwrap();
    for text in [tapped, metrics(port), rt.stderr_text()] {
        assert!(!text.contains("s3cr3t"), "a secret leaked: {text}");
    }
    assert_eq!(
        rx.log()[0].header("authorization"),
        Some("Bearer s3cr3t-bearer-token")
    );
    drop(tap);
    let deadline = Instant::now() + WAIT;
    while metric_value(&metrics(port), "ringtail_tap_clients") != Some(0.0) {
        assert!(Instant::now() < deadline, "a closed tap is let go");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut rt);
}

#[test]
fn tap_without_ringtail_says_how_to_reach_it() {
    let out = run_cli(
        &["tap", "--addr", &format!("127.0.0.1:{}", free_port())],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot connect to ringtail at 127.0.0.1:"),
        "{out:?}"
    );
    assert!(out.stderr.contains("kubectl"), "{out:?}");
}

#[test]
fn tap_in_the_foreground_prints_new_lines_and_ships_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = LokiReceiver::start();
    let pods = tmp.path().join("pods");
    let data = tmp.path().join("data");
    let mut a = PodDir::new(&pods, "a", "p-a", "ua").container("c");
    let mut b = PodDir::new(&pods, "b", "p-b", "ub").container("c");
    a.write_line(Stream::Stdout, "old line, before the tap");
    // The same port as a running ringtail would use: the foreground tap takes another one.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg_path = tmp.path().join("ringtail.yaml");
    fs::write(&cfg_path, pods_only_config(&data, &pods, &rx.url(), port)).unwrap();
    // Its throwaway positions go under TMPDIR: a fresh directory, removed when it stops.
    let tmpdir = tmp.path().join("tmpdir");
    fs::create_dir_all(&tmpdir).unwrap();
    let mut tap = TapProc::start_with_env(
        &tmp.path().join("tap"),
        &[
            "--config",
            cfg_path.to_str().unwrap(),
            "--match",
            "namespace=a",
        ],
        &[("TMPDIR", tmpdir.to_str().unwrap())],
    );
    // Started (its start scans are done) once it says it runs.
    let deadline = Instant::now() + WAIT;
    while !tap.stderr().contains("running on node") {
        assert!(Instant::now() < deadline, "{}", tap.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut want = Vec::new();
    for i in 0..3 {
        let line = format!("new {i}");
        let ts = a.write_line(Stream::Stdout, &line);
        want.push(pod_json("a", "p-a", "c", ts, &line));
        b.write_line(Stream::Stdout, format!("other {i}"));
    }
    let got = tap.wait_lines(3);
    assert_eq!(got, want, "{}", tap.stderr());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tap.lines().len(), 3);
    assert_eq!(rx.requests(), 0, "the foreground tap ships nothing");
    assert!(!data.exists(), "the configured data_dir is left alone");
    assert_eq!(
        fs::read_dir(&tmpdir).unwrap().count(),
        1,
        "one fresh directory"
    );
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(tap.child.id() as i32, libc::SIGTERM) };
    let status = tap.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", tap.stderr());
    assert_eq!(fs::read_dir(&tmpdir).unwrap().count(), 0, "removed at exit");
    drop(busy);
}
