//! End-to-end throughput of the real `ringtail` binary: a generated kubelet/containerd log tree
//! in, a loopback Loki receiver out, every line counted by its sequence number.
//!
//! Run: `cargo bench --bench e2e`. Settings come from the environment:
//!
//! | variable       | default    | meaning                                                        |
//! |----------------|------------|----------------------------------------------------------------|
//! | `E2E_FILES`    | 200        | CRI files, `<root>/<ns>_<pod>_<uid>/<container>/0.log`         |
//! | `E2E_MB`       | 256        | MiB of CRI bytes in total (file sizes are skewed, heavy-tailed) |
//! | `E2E_RUNS`     | 3          | runs per configuration (median, min and max are printed)       |
//! | `E2E_THREADS`  | `1,2`      | `tail.threads` values to run                                   |
//! | `E2E_IO`       | `auto`     | `tail.io`: `auto`, `pread`, `io_uring`, or `both` (pread and io_uring) |
//! | `E2E_TIMEOUT`  | 120        | seconds to wait for every line of one run                      |
//! | `E2E_LOKI_MS`  | 0          | receiver's delay before each answer (a real Loki's latency)    |
//! | `E2E_DIR`      | temp dir   | where the tree is generated (on the disk to measure)           |
//! | `E2E_SEED`     | 1          | generator seed                                                 |
//! | `E2E_KEEP`     | unset      | `1`: keep the generated tree and print its path                |
//! | `E2E_KUBE`     | `off`      | `on`: a fake kube API (tests/support/kubeapi.rs) lists every pod with `app` labels, so pod metadata enrichment is measured; `both`: off and on |
//!
//! Without `--bench` (`cargo test --benches`), it runs a small smoke configuration instead.
//!
//! Figures: MB/s and lines/s of input from the start of the process to the last line stored
//! (startup included); ringtail's CPU-seconds per GB of input and peak RSS, read from /proc
//! before SIGTERM; and, on the same bytes in this process, `snap::raw::Encoder` alone over 1 MiB
//! blocks, the floor any shipper that compresses every byte has to pay. The receiver runs in
//! this process and competes for the same cores; its CPU time is printed too.
//!
//! Exits non-zero when a line was lost (or ringtail failed).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use prost::Message;
use ringtail::sink::proto::PushRequest;

#[path = "common/gen.rs"]
mod gen;
#[path = "common/stats.rs"]
mod stats;
use stats::{median, spread};

use gen::{Gen, KINDS};

// The fake kube API of the integration tests, to measure enrichment against the real client
// (it reaches its helpers as `super::http` and `super::cri`).
#[allow(dead_code)]
#[path = "../tests/support/cri.rs"]
mod cri;
#[allow(dead_code)]
#[path = "../tests/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../tests/support/kubeapi.rs"]
mod kubeapi;
use kubeapi::FakeKubeApi;

// ---------------------------------------------------------------- settings

struct Settings {
    files: usize,
    bytes: u64,
    runs: usize,
    threads: Vec<usize>,
    io: Vec<String>,
    timeout: Duration,
    loki_delay: Duration,
    dir: Option<PathBuf>,
    seed: u64,
    keep: bool,
    /// Runs without and/or with a kube API.
    kube: Vec<bool>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("e2e: cannot parse {name}={v:?}");
            std::process::exit(2)
        }),
        _ => default,
    }
}

impl Settings {
    fn from_env(bench: bool) -> Settings {
        // `cargo test --benches` runs this without `--bench`: keep it a quick smoke test.
        let (files, mb, runs, threads) = if bench {
            (200, 256, 3, "1,2")
        } else {
            (8, 4, 1, "1")
        };
        let threads: String = env_or("E2E_THREADS", threads.to_string());
        let threads = threads
            .split(',')
            .map(|t| {
                t.trim().parse().unwrap_or_else(|_| {
                    eprintln!("e2e: E2E_THREADS: {t:?} is not a number");
                    std::process::exit(2)
                })
            })
            .collect();
        let io: String = env_or("E2E_IO", "auto".to_string());
        let io = match io.as_str() {
            "both" => vec!["pread".to_string(), "io_uring".to_string()],
            other => other.split(',').map(|s| s.trim().to_string()).collect(),
        };
        Settings {
            files: env_or("E2E_FILES", files).max(1),
            bytes: env_or::<u64>("E2E_MB", mb).max(1) << 20,
            runs: env_or("E2E_RUNS", runs).max(1),
            threads,
            io,
            timeout: Duration::from_secs(env_or("E2E_TIMEOUT", 120)),
            loki_delay: Duration::from_millis(env_or("E2E_LOKI_MS", 0)),
            dir: std::env::var_os("E2E_DIR").map(PathBuf::from),
            seed: env_or("E2E_SEED", 1),
            keep: env_or("E2E_KEEP", 0u8) == 1,
            kube: match env_or("E2E_KUBE", "off".to_string()).as_str() {
                "off" => vec![false],
                "on" => vec![true],
                "both" => vec![false, true],
                other => {
                    eprintln!("e2e: E2E_KUBE: {other:?} is not off, on or both");
                    std::process::exit(2)
                }
            },
        }
    }
}

// ---------------------------------------------------------------- the log tree

struct Tree {
    root: PathBuf,
    files: Vec<PathBuf>,
    /// (namespace, pod, uid, app) of every pod directory.
    pods: Vec<(String, String, String, String)>,
    bytes: u64,
    lines: u64,
    counts: [u64; 5],
}

/// Writes `files` CRI files of `bytes` in total. File sizes follow a Pareto-like law (a few
/// chatty containers, many quiet ones), capped at 20× the mean.
fn generate(root: &Path, files: usize, bytes: u64, seed: u64) -> Tree {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let weights: Vec<f64> = (0..files)
        .map(|_| (1.0 - rng.f64()).powf(-0.6).min(20.0))
        .collect();
    let sum: f64 = weights.iter().sum();
    // Whole seconds, an hour ago: timestamps (and so sizes) depend on the seed only.
    let start_ns = (ringtail::timefmt::now_ns() / 1_000_000_000 - 3600) * 1_000_000_000;
    let mut gen = Gen::new(seed, start_ns, 0);
    let mut out = Vec::new();
    let mut paths = Vec::with_capacity(files);
    let mut pods = Vec::new();
    let mut total = 0u64;
    for (i, w) in weights.iter().enumerate() {
        let target = ((bytes as f64) * w / sum) as usize;
        let (ns, pod, uid, container) = gen::file_names(i);
        let dir = root.join(format!("{ns}_{pod}_{uid}")).join(&container);
        fs::create_dir_all(&dir).expect("create pod dir");
        if i % 2 == 0 {
            // The app's container; the pod's other file is its istio-proxy.
            pods.push((ns.clone(), pod.clone(), uid.clone(), container.clone()));
        }
        gen.ts_ns = start_ns + rng.i64(0..1_000_000_000);
        out.clear();
        while out.len() < target.max(1) {
            gen.cri_line(&mut out);
        }
        let path = dir.join("0.log");
        fs::write(&path, &out).expect("write log file");
        total += out.len() as u64;
        paths.push(path);
    }
    Tree {
        root: root.to_path_buf(),
        files: paths,
        pods,
        bytes: total,
        lines: gen.seq,
        counts: gen.counts,
    }
}

// ---------------------------------------------------------------- the receiver

/// Counts what a fake Loki stored, by sequence number.
#[derive(Default)]
struct Counts {
    /// Times each sequence number was received (saturating).
    seen: Vec<u8>,
    unique: u64,
    dups: u64,
    /// Entries without a sequence number we generated.
    unknown: u64,
    /// Entries whose stream has an `app` label (pod metadata from the kube API).
    with_app: u64,
    entries: u64,
    line_bytes: u64,
    body_bytes: u64,
    requests: u64,
    bad_requests: u64,
    done_at: Option<Instant>,
}

/// A push body and when it was read.
type Body = (Instant, Vec<u8>);

struct Shared {
    counts: Mutex<Counts>,
    cond: Condvar,
    stop: AtomicBool,
    /// Delay before each answer.
    delay: Duration,
    /// Bodies answered and waiting to be decoded, with when they were read.
    bodies: Mutex<Option<mpsc::Sender<Body>>>,
}

/// A minimal Loki push endpoint on 127.0.0.1: HTTP/1.1 keep-alive, 204 answers, snappy +
/// protobuf bodies decoded with `ringtail::sink::proto::PushRequest` and counted by sequence
/// number. The test-suite receiver (`tests/support`) validates and stores every entry with its
/// labels, which at hundreds of MB per run would cost more CPU and memory than ringtail itself
/// on a 2-core machine; this one keeps one byte per expected line.
///
/// It answers as soon as the body is read, and decodes on another thread at the lowest CPU
/// priority (nice 19): ringtail's writer waits for each answer before it sends the next batch,
/// and on a 2-core machine the decoding would otherwise take CPU from ringtail, where a real Loki
/// runs elsewhere. The time a line arrived is when its body was read, whenever it is decoded.
/// A body that fails to decode is counted in `bad_requests` (and fails the run through lost
/// lines).
struct Receiver {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(expected: u64, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            counts: Mutex::new(Counts {
                seen: vec![0; expected as usize],
                ..Counts::default()
            }),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            delay,
            bodies: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<Body>();
        *shared.bodies.lock().unwrap() = Some(tx);
        let sh = shared.clone();
        thread::spawn(move || {
            // SAFETY: plain syscalls on this thread's own id.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
            let mut seqs = Vec::new();
            for (at, body) in rx {
                match decode(&body, &mut seqs) {
                    Some((line_bytes, with_app)) => {
                        sh.counts.lock().unwrap().with_app += with_app;
                        record(&sh, &seqs, line_bytes, body.len(), at)
                    }
                    None => sh.counts.lock().unwrap().bad_requests += 1,
                }
            }
        });
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let sh = sh.clone();
                    thread::spawn(move || serve(conn, &sh));
                }
            }
        });
        Receiver {
            port,
            shared,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/loki/api/v1/push", self.port)
    }

    /// Waits until every expected line is stored, the child exits, or `timeout` passes.
    fn wait_all(&self, child: &mut Child, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut c = self.shared.counts.lock().unwrap();
        loop {
            if let Some(t) = c.done_at {
                return Some(t);
            }
            let now = Instant::now();
            if now >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            c = self.shared.cond.wait_timeout(c, wait).unwrap().0;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.bodies.lock().unwrap().take();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_nodelay(true);
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::with_capacity(256 << 10, conn);
    let Some(bodies) = shared.bodies.lock().unwrap().clone() else {
        return;
    };
    let mut line = String::new();
    loop {
        // Request line, skipping blank lines before it.
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim().is_empty() => continue,
            Ok(_) => {}
        }
        let mut len = 0usize;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                len = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = Vec::new();
        let read = if chunked {
            read_chunked(&mut reader, &mut body)
        } else {
            body.resize(len, 0);
            reader.read_exact(&mut body)
        };
        if read.is_err() {
            return;
        }
        let at = Instant::now();
        if !shared.delay.is_zero() {
            thread::sleep(shared.delay);
        }
        let answered = writer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
        if bodies.send((at, body)).is_err() || answered.is_err() || close {
            return;
        }
    }
}

fn read_chunked(r: &mut impl BufRead, body: &mut Vec<u8>) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        line.clear();
        r.read_line(&mut line)?;
        if size == 0 {
            return Ok(());
        }
    }
}

/// Decodes a push; fills `seqs` with each entry's sequence number (`u64::MAX` when it has
/// none) and returns the line bytes and how many entries carry an `app` label.
fn decode(body: &[u8], seqs: &mut Vec<u64>) -> Option<(u64, u64)> {
    seqs.clear();
    let raw = snap::raw::Decoder::new().decompress_vec(body).ok()?;
    let push = PushRequest::decode(raw.as_slice()).ok()?;
    let mut bytes = 0;
    let mut with_app = 0;
    for s in &push.streams {
        if s.labels.contains("app=\"") {
            with_app += s.entries.len() as u64;
        }
        for e in &s.entries {
            bytes += e.line.len() as u64;
            seqs.push(gen::seq_of(e.line.as_bytes()).unwrap_or(u64::MAX));
        }
    }
    Some((bytes, with_app))
}

fn record(shared: &Shared, seqs: &[u64], line_bytes: u64, body_bytes: usize, at: Instant) {
    let mut c = shared.counts.lock().unwrap();
    c.requests += 1;
    c.entries += seqs.len() as u64;
    c.line_bytes += line_bytes;
    c.body_bytes += body_bytes as u64;
    for &s in seqs {
        match c.seen.get_mut(s as usize) {
            Some(n) => {
                *n = n.saturating_add(1);
                if *n == 1 {
                    c.unique += 1;
                } else {
                    c.dups += 1;
                }
            }
            None => c.unknown += 1,
        }
    }
    if c.done_at.is_none() && c.unique == c.seen.len() as u64 {
        c.done_at = Some(at);
        shared.cond.notify_all();
    }
}

// ---------------------------------------------------------------- /proc

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, all threads, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// VmHWM (peak resident set) in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU seconds used by this process so far (the receiver's threads, while a run is going).
fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage struct, which is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// ---------------------------------------------------------------- one run

struct RunResult {
    pid: u32,
    secs: f64,
    mb_s: f64,
    lines_s: f64,
    cpu_s: f64,
    cpu_s_per_gb: f64,
    rss_mib: f64,
    lost: u64,
    dups: u64,
    with_app: u64,
    unknown: u64,
    receiver_cpu_s: f64,
    requests: u64,
    bad_requests: u64,
    body_bytes: u64,
    exit: Option<ExitStatus>,
}

fn config_yaml(
    tree: &Tree,
    data_dir: &Path,
    url: &str,
    port: u16,
    threads: usize,
    io: &str,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("quote");
    format!(
        "node_name: bench-node
data_dir: {data}
server:
  listen: 127.0.0.1:{port}
loki:
  url: {url}
logs:
  pods:
    enabled: true
    path: {pods}
    read_from: beginning
  events: {{ enabled: false }}
  journal: {{ enabled: false }}
  rke2: {{ enabled: false }}
tail:
  threads: {threads}
  io: {io}
log:
  level: warn
",
        data = q(&data_dir.to_string_lossy()),
        url = q(url),
        pods = q(&tree.root.to_string_lossy()),
    )
}

/// A fake kube API listing every pod of the tree on the bench's node, with `app` labels.
fn kube_api(tree: &Tree) -> FakeKubeApi {
    let api = FakeKubeApi::start();
    for (ns, pod, uid, app) in &tree.pods {
        api.put_pod(FakeKubeApi::pod(
            ns,
            pod,
            uid,
            "bench-node",
            &[("app", app), ("app.kubernetes.io/name", app)],
            &[],
        ));
    }
    api
}

fn run_once(
    tree: &Tree,
    work: &Path,
    threads: usize,
    io: &str,
    kube: Option<&FakeKubeApi>,
    s: &Settings,
) -> RunResult {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).expect("create run dir");
    let kubeconfig = work.join("kubeconfig");
    if let Some(api) = kube {
        api.write_kubeconfig(&kubeconfig);
    }
    let receiver = Receiver::start(tree.lines, s.loki_delay);
    let config = work.join("ringtail.yaml");
    let yaml = config_yaml(
        tree,
        &work.join("data"),
        &receiver.url(),
        free_port(),
        threads,
        io,
    );
    fs::write(&config, yaml).expect("write config");
    let stderr = fs::File::create(work.join("stderr.log")).expect("stderr file");

    let cpu0 = self_cpu_seconds();
    let t0 = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtail"));
    cmd.env_remove("KUBECONFIG");
    if kube.is_some() {
        cmd.env("KUBECONFIG", &kubeconfig);
    }
    let mut child = cmd
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start ringtail");
    let pid = child.id();
    let done = receiver.wait_all(&mut child, s.timeout);
    let end = done.unwrap_or_else(Instant::now);
    // Read CPU and memory before SIGTERM: shutdown work is not throughput.
    let cpu_s = cpu_seconds(pid).unwrap_or(f64::NAN);
    let rss_mib = peak_rss_mib(pid).unwrap_or(f64::NAN);
    let receiver_cpu_s = self_cpu_seconds() - cpu0;
    // SAFETY: kill has no memory preconditions; pid is our child, not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let exit = wait_exit(&mut child, Duration::from_secs(20));
    if exit.is_none() {
        eprintln!("e2e: ringtail did not exit within 20 s of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    let secs = end.duration_since(t0).as_secs_f64();
    let c = receiver.shared.counts.lock().unwrap();
    let lost = tree.lines - c.unique;
    if lost > 0 || !exit.is_some_and(|e| e.success()) {
        let log = fs::read_to_string(work.join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "e2e: ringtail exit {exit:?}, {lost} lines lost; last stderr lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    RunResult {
        pid,
        secs,
        mb_s: tree.bytes as f64 / 1e6 / secs,
        lines_s: tree.lines as f64 / secs,
        cpu_s,
        cpu_s_per_gb: cpu_s / (tree.bytes as f64 / 1e9),
        rss_mib,
        lost,
        dups: c.dups,
        with_app: c.with_app,
        unknown: c.unknown,
        receiver_cpu_s,
        requests: c.requests,
        bad_requests: c.bad_requests,
        body_bytes: c.body_bytes,
        exit,
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- snappy alone

/// `snap::raw::Encoder` over the files' bytes in 1 MiB blocks; MB/s of input (compression
/// time only, files read beforehand).
fn snappy_alone(tree: &Tree) -> f64 {
    let mut enc = snap::raw::Encoder::new();
    let mut out = vec![0u8; snap::raw::max_compress_len(1 << 20)];
    let mut busy = Duration::ZERO;
    let mut bytes = 0u64;
    for path in &tree.files {
        let data = fs::read(path).expect("read back");
        let t = Instant::now();
        for block in data.chunks(1 << 20) {
            std::hint::black_box(enc.compress(block, &mut out).expect("snappy"));
        }
        busy += t.elapsed();
        bytes += data.len() as u64;
    }
    bytes as f64 / 1e6 / busy.as_secs_f64()
}

// ---------------------------------------------------------------- report

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let s = Settings::from_env(bench);
    let tmp = match &s.dir {
        Some(d) => {
            fs::create_dir_all(d).expect("create E2E_DIR");
            tempfile::Builder::new()
                .prefix("ringtail-e2e-")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new().prefix("ringtail-e2e-").tempdir(),
    }
    .expect("temp dir");

    let t = Instant::now();
    let tree = generate(&tmp.path().join("pods"), s.files, s.bytes, s.seed);
    let gen_secs = t.elapsed().as_secs_f64();
    let mix: Vec<String> = KINDS
        .iter()
        .map(|k| {
            format!(
                "{} {:.1}%",
                k.name(),
                100.0 * tree.counts[k.index()] as f64 / tree.lines as f64
            )
        })
        .collect();
    println!(
        "e2e: {} files, {:.1} MiB, {} lines (avg {:.0} B/line) generated in {gen_secs:.1} s under {}",
        tree.files.len(),
        tree.bytes as f64 / (1 << 20) as f64,
        tree.lines,
        tree.bytes as f64 / tree.lines as f64,
        tmp.path().display()
    );
    println!("e2e: line mix: {}", mix.join(", "));
    if !s.loki_delay.is_zero() {
        println!(
            "e2e: the receiver answers each push after {:?}",
            s.loki_delay
        );
    }

    let snappy: Vec<f64> = (0..s.runs).map(|_| snappy_alone(&tree)).collect();
    let snappy_mb_s = median(&snappy);
    println!(
        "e2e: snappy alone (snap::raw::Encoder, 1 MiB blocks, same bytes): {} MB/s",
        spread(&snappy)
    );

    let mut failed = false;
    let mut summary = Vec::new();
    let api = s.kube.contains(&true).then(|| kube_api(&tree));
    for &kube in &s.kube {
        for io in &s.io {
            for &threads in &s.threads {
                let mut results = Vec::new();
                let k = if kube { " kube=on" } else { "" };
                for r in 0..s.runs {
                    let work = tmp.path().join(format!("run-{io}-{threads}-{kube}-{r}"));
                    let res =
                        run_once(&tree, &work, threads, io, api.as_ref().filter(|_| kube), &s);
                    println!(
                    "  threads={threads} io={io}{k} run {}/{}: {:.2} s, {:.1} MB/s, {:.0} lines/s, \
                     CPU {:.2} s = {:.2} CPU-s/GB, peak RSS {:.1} MiB, lost {}, dup {}, unknown {}, with app {}, \
                     {} pushes ({:.1} MiB snappy, {} undecodable), receiver CPU {:.2} s, ringtail pid {}",
                    r + 1,
                    s.runs,
                    res.secs,
                    res.mb_s,
                    res.lines_s,
                    res.cpu_s,
                    res.cpu_s_per_gb,
                    res.rss_mib,
                    res.lost,
                    res.dups,
                    res.unknown,
                    res.with_app,
                    res.requests,
                    res.body_bytes as f64 / (1 << 20) as f64,
                    res.bad_requests,
                    res.receiver_cpu_s,
                    res.pid,
                );
                    if res.lost > 0 {
                        failed = true;
                    }
                    if !res.exit.is_some_and(|e| e.success()) {
                        eprintln!("e2e: ringtail exited with {:?}", res.exit);
                        failed = true;
                    }
                    let _ = fs::remove_dir_all(&work);
                    results.push(res);
                }
                let col = |f: fn(&RunResult) -> f64| results.iter().map(f).collect::<Vec<f64>>();
                let mb_s = col(|r| r.mb_s);
                let per_core: Vec<f64> = mb_s.iter().map(|m| m / threads as f64).collect();
                let ratio: Vec<f64> = mb_s.iter().map(|m| m / snappy_mb_s).collect();
                summary.push(format!(
                    "threads={threads} io={io}{k} ({} runs, median [min..max])\n    \
                 MB/s            {}\n    \
                 MB/s per tailer {}\n    \
                 lines/s         {}\n    \
                 CPU-s/GB        {}\n    \
                 peak RSS MiB    {}\n    \
                 receiver CPU-s  {}\n    \
                 ÷ snappy alone  {} (snappy alone {:.0} MB/s)\n    \
                 lost {}  duplicates {}",
                    results.len(),
                    spread(&mb_s),
                    spread(&per_core),
                    spread(&col(|r| r.lines_s)),
                    spread(&col(|r| r.cpu_s_per_gb)),
                    spread(&col(|r| r.rss_mib)),
                    spread(&col(|r| r.receiver_cpu_s)),
                    spread(&ratio),
                    snappy_mb_s,
                    results.iter().map(|r| r.lost).sum::<u64>(),
                    results.iter().map(|r| r.dups).sum::<u64>(),
                ));
            }
        }
    }
    println!(
        "\ne2e summary: {:.1} MiB input, {} lines, {} files; MB = 10^6 bytes, GB = 10^9 bytes",
        tree.bytes as f64 / (1 << 20) as f64,
        tree.lines,
        tree.files.len()
    );
    for s in &summary {
        println!("  {s}");
    }
    if s.keep {
        let kept = tmp.keep();
        println!("e2e: kept the tree in {}", kept.display());
    }
    if failed {
        eprintln!("e2e: FAILED: lines were lost or ringtail failed");
        std::process::exit(1);
    }
}
