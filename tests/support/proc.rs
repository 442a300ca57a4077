//! The `ringtail` binary as a child process, and helpers to talk to it.

use std::fs::{self, File};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::http;

/// The binary cargo built for these tests, or `RINGTAIL_BIN` (a release build, for soak runs
/// whose backlog a debug build would take many minutes to drain).
pub fn bin_path() -> PathBuf {
    std::env::var_os("RINGTAIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ringtail")))
}

/// A running `ringtail run --config <dir>/ringtail.yaml`. Killed (SIGKILL) on drop; when the
/// test is panicking, its stderr is printed then.
pub struct Ringtail {
    child: Child,
    pid: u32,
    dir: PathBuf,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Ringtail {
    /// Writes `config_yaml` to `<dir>/ringtail.yaml` and starts ringtail on it with
    /// `NODE_NAME=test-node`. Stdout and stderr go to `<dir>/ringtail-<n>.stdout.log` and
    /// `.stderr.log` (`n` = 1, 2, ... per start in the same `dir`).
    pub fn start(config_yaml: &str, dir: &Path) -> Ringtail {
        Ringtail::start_with_env(config_yaml, dir, &[])
    }

    /// [`start`](Self::start) with extra environment variables (they override `NODE_NAME`).
    pub fn start_with_env(config_yaml: &str, dir: &Path, env: &[(&str, &str)]) -> Ringtail {
        Ringtail::spawn(config_yaml, dir, env, None)
    }

    /// [`start`](Self::start) as user `uid` and group `gid`, without supplementary groups: the
    /// tests run as root, which reads any file whatever its mode, so a permission that denies
    /// needs an unprivileged ringtail. `dir` must be searchable by that user (it is the working
    /// directory, and the config is read from it); stdout and stderr are opened by the test.
    pub fn start_as(config_yaml: &str, dir: &Path, uid: u32, gid: u32) -> Ringtail {
        Ringtail::spawn(config_yaml, dir, &[], Some((uid, gid)))
    }

    fn spawn(
        config_yaml: &str,
        dir: &Path,
        env: &[(&str, &str)],
        user: Option<(u32, u32)>,
    ) -> Ringtail {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let config_path = dir.join("ringtail.yaml");
        fs::write(&config_path, config_yaml)
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let mut n = 1;
        while dir.join(format!("ringtail-{n}.stderr.log")).exists() {
            n += 1;
        }
        let stdout_path = dir.join(format!("ringtail-{n}.stdout.log"));
        let stderr_path = dir.join(format!("ringtail-{n}.stderr.log"));
        let stdout = File::create(&stdout_path).expect("create stdout file");
        let stderr = File::create(&stderr_path).expect("create stderr file");
        let mut cmd = Command::new(bin_path());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Never reach a real cluster from a test.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("KUBECONFIG")
            // kube-client honours proxies even for the fake API on loopback.
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env("NODE_NAME", "test-node");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            // std drops root's supplementary groups itself when it sets a uid from root.
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin_path().display()));
        Ringtail {
            pid: child.id(),
            child,
            dir: dir.to_path_buf(),
            config_path,
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The exit status, if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` (a `libc::SIG*`) unless it has already exited.
    pub fn signal(&mut self, sig: i32) {
        if self.is_running() {
            // SAFETY: plain kill(2) on our own, not yet reaped child.
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
        }
    }

    /// SIGTERM (graceful stop).
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGINT.
    pub fn sigint(&mut self) {
        self.signal(libc::SIGINT);
    }

    /// SIGKILL and reap (a crash: nothing flushed, nothing committed).
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        match self.wait_exit(Duration::from_secs(10)) {
            Some(s) => s,
            None => panic!("ringtail pid {} survived SIGKILL", self.pid),
        }
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `GET /ready` on `port` answers 200; false on timeout or if it exited.
    pub fn wait_ready(&mut self, port: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return false;
            }
            if http::get(port, "/ready").is_ok_and(|r| r.status == 200) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Stdout parsed as one JSON value per line (the stdout sink); panics on a bad line.
    pub fn stdout_json(&self) -> Vec<serde_json::Value> {
        self.stdout_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l:?}"))
            })
            .collect()
    }

    /// Both outputs, labelled, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "---- ringtail pid {} stderr ({}) ----\n{}\n---- stdout ({}) ----\n{}\n----",
            self.pid,
            self.stderr_path.display(),
            tail(&self.stderr_text(), 200),
            self.stdout_path.display(),
            tail(&self.stdout_text(), 50),
        )
    }
}

impl Drop for Ringtail {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} lines ...]\n"));
    }
    out.push_str(&lines[skip..].join("\n"));
    out
}

/// What a one-shot `ringtail <args>` printed.
#[derive(Debug)]
pub struct CliOutput {
    /// `None` when it was killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ringtail <args>` to its end (killed after `timeout`), e.g. `check-config FILE`.
pub fn run_cli(args: &[&str], timeout: Duration) -> CliOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(bin_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout"))
        .stderr(File::create(&err_path).expect("create stderr"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBECONFIG")
        .env("NODE_NAME", "test-node")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin_path().display()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `GET http://127.0.0.1:<port>/metrics`; an error unless it answers 200.
pub fn try_metrics(port: u16) -> io::Result<String> {
    let resp = http::get(port, "/metrics")?;
    if resp.status != 200 {
        return Err(io::Error::other(format!(
            "GET /metrics: status {}: {}",
            resp.status,
            resp.text()
        )));
    }
    Ok(resp.text())
}

/// `GET http://127.0.0.1:<port>/metrics`; panics unless it answers 200.
pub fn metrics(port: u16) -> String {
    try_metrics(port).unwrap_or_else(|e| panic!("metrics on port {port}: {e}"))
}

/// The value of one series in Prometheus text: `series` is the name with its labels exactly as
/// printed (`loki_write_sent_entries_total`, `x_total{reason="y"}`).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The sum over every series of metric `name` (any labels); 0 when there is none.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if rest.starts_with('{') {
                &rest[rest.find('}')? + 1..]
            } else {
                rest
            };
            rest.strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// A config that tails only pod logs under `pods_path` and ships to `loki_url`, with short
/// batch and retry timings. Events, journal and RKE2 are off.
pub fn pods_only_config(
    data_dir: &Path,
    pods_path: &Path,
    loki_url: &str,
    listen_port: u16,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("quote");
    format!(
        "node_name: test-node
data_dir: {data}
server:
  listen: 127.0.0.1:{listen_port}
loki:
  url: {url}
  timeout: 5s
  batch: {{ max_bytes: 1MiB, max_wait: 200ms }}
  retry: {{ min_backoff: 100ms, max_backoff: 1s, max_retries: 0 }}
logs:
  pods:
    enabled: true
    path: {pods}
    read_from: beginning
  events:
    enabled: false
  journal:
    enabled: false
  rke2:
    enabled: false
",
        data = q(&data_dir.to_string_lossy()),
        url = q(loki_url),
        pods = q(&pods_path.to_string_lossy()),
    )
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`: the peak resident set).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
}
