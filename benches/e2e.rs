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
//! | `E2E_CORES`    | unset      | instead of `E2E_THREADS`: numbers of cores to pin ringtail to (the last ones of this process's CPUs), with as many tailers: the scaling curve |
//! | `E2E_IO`       | `auto`     | `tail.io`: `auto`, `pread`, `io_uring`, or `both` (pread and io_uring) |
//! | `E2E_TIMEOUT`  | 120        | seconds to wait for every line of one run                      |
//! | `E2E_DELAY_MS` | 0          | receiver's delay before each answer (a real Loki's latency); a list (`0,20,50,100`) runs each in turn, run by run, and prints each delay's ratios to the first |
//! | `E2E_DIR`      | temp dir   | where the tree is generated (on the disk to measure)           |
//! | `E2E_SEED`     | 1          | generator seed                                                 |
//! | `E2E_KEEP`     | unset      | `1`: keep the generated tree and print its path                |
//! | `E2E_KUBE`     | `off`      | `on`: a fake kube API (tests/support/kubeapi.rs) lists every pod with `app` labels, so pod metadata enrichment is measured; `both`: off and on |
//! | `E2E_RATE`     | 0          | latency mode when > 0: the files start with one line each and a writer appends to all of them at this many MB/s for `E2E_SECS`, while ringtail runs; each line's latency, from the write that made it visible to the receiver reading the push that carries it (and answering 204), is collected into percentiles and a histogram |
//! | `E2E_SECS`     | 10         | seconds of writing in latency mode                             |
//! | `E2E_BIN`      | this build | `name=path,name=path`: ringtail binaries to compare in one run, taking turns run by run (e.g. a build of the previous commit against this one); ratios to the first are printed |
//! | `E2E_IDLE`     | unset      | idle modes instead of throughput: `quiet`, `trickle`, `new`, or a list (`quiet,trickle,new`); the tree is shipped first, then `E2E_SECS` (default 30 here) are measured (see `e2e/idle.rs`) |
//! | `E2E_TRICKLE`  | 20         | files that get one line a second each in `trickle` mode        |
//!
//! Without `--bench` (`cargo test --benches`), it runs a small smoke configuration instead.
//!
//! Figures: MB/s and lines/s of input from the start of the process to the last line stored
//! (startup included); ringtail's CPU-seconds per GB of input and peak RSS, read from /proc
//! before SIGTERM, and its RSS 2 s later (idle, every file still tracked); and, on the same bytes in this process, `snap::raw::Encoder` alone over 1 MiB
//! blocks, the floor any shipper that compresses every byte has to pay. The receiver runs in
//! this process and competes for the same cores; its CPU time is printed too. For each thread
//! role (tailer, sealer, batcher, sender, …), the busiest thread's CPU time over the run's
//! wall time: one near 1.0 is the stage that caps throughput.
//!
//! Exits non-zero when a line was lost (or ringtail failed).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use prost::Message;
use ringtail::sink::proto::PushRequest;

#[path = "common/gen.rs"]
mod gen;
#[path = "e2e/idle.rs"]
mod idle;
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
    /// `tail.threads` values to run, or with `pin`, numbers of cores.
    threads: Vec<usize>,
    /// Pin ringtail to `threads` cores (the highest-numbered this process may use).
    pin: bool,
    io: Vec<String>,
    timeout: Duration,
    /// Receiver delays before each answer, taking turns run by run.
    delays: Vec<Duration>,
    dir: Option<PathBuf>,
    seed: u64,
    keep: bool,
    /// Runs without and/or with a kube API.
    kube: Vec<bool>,
    /// (name, path) of the binaries to compare.
    bins: Vec<(String, PathBuf)>,
    /// Latency mode: bytes per second written while ringtail runs (0: throughput mode).
    rate: f64,
    write_for: Duration,
    /// Idle modes to run instead of throughput, the window each measures, and the files that
    /// trickle.
    idle: Vec<idle::Mode>,
    idle_secs: Duration,
    trickle: usize,
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
        // E2E_CORES replaces E2E_THREADS: n cores, n tailers.
        let cores: String = env_or("E2E_CORES", String::new());
        let (var, list) = if cores.is_empty() {
            ("E2E_THREADS", env_or("E2E_THREADS", threads.to_string()))
        } else {
            ("E2E_CORES", cores)
        };
        let threads = list
            .split(',')
            .map(|t| match t.trim().parse() {
                Ok(n) if n > 0 => n,
                _ => {
                    eprintln!("e2e: {var}: {t:?} is not a positive number");
                    std::process::exit(2)
                }
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
            pin: var == "E2E_CORES",
            io,
            timeout: Duration::from_secs(env_or("E2E_TIMEOUT", 120)),
            delays: env_or("E2E_DELAY_MS", "0".to_string())
                .split(',')
                .map(|d| match d.trim().parse() {
                    Ok(ms) => Duration::from_millis(ms),
                    Err(_) => {
                        eprintln!("e2e: E2E_DELAY_MS: {d:?} is not a number of milliseconds");
                        std::process::exit(2)
                    }
                })
                .collect(),
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
            rate: env_or::<f64>("E2E_RATE", 0.0) * 1e6,
            write_for: Duration::from_secs(env_or("E2E_SECS", 10)),
            idle: env_or("E2E_IDLE", String::new())
                .split(',')
                .filter(|m| !m.trim().is_empty())
                .map(|m| {
                    idle::Mode::parse(m.trim()).unwrap_or_else(|| {
                        eprintln!("e2e: E2E_IDLE: {m:?} is not quiet, trickle or new");
                        std::process::exit(2)
                    })
                })
                .collect(),
            idle_secs: Duration::from_secs(env_or("E2E_SECS", 30)),
            trickle: env_or("E2E_TRICKLE", 20),
            bins: match std::env::var("E2E_BIN") {
                Ok(list) if !list.trim().is_empty() => list
                    .split(',')
                    .map(|b| match b.split_once('=') {
                        Some((name, path)) if Path::new(path.trim()).is_file() => {
                            (name.trim().to_string(), PathBuf::from(path.trim()))
                        }
                        _ => {
                            eprintln!("e2e: E2E_BIN: {b:?} is not name=path of an existing binary");
                            std::process::exit(2)
                        }
                    })
                    .collect(),
                _ => vec![(String::new(), PathBuf::from(env!("CARGO_BIN_EXE_ringtail")))],
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
    /// Lines to wait for (`u64::MAX` while a latency-mode writer is still writing).
    expected: u64,
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

/// The receiver decodes the bodies it holds once no push has come for this long.
const DECODE_AFTER_QUIET: Duration = Duration::from_millis(100);

struct Shared {
    counts: Mutex<Counts>,
    cond: Condvar,
    stop: AtomicBool,
    /// Delay before each answer.
    delay: Duration,
    /// Requests being answered now, and the most at once: the concurrency ringtail reached.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Bodies answered and waiting to be decoded, with when they were read.
    bodies: Mutex<Option<mpsc::Sender<Body>>>,
    /// Latency mode: when each line was written, and each line's latency in µs.
    written: Option<Arc<Written>>,
    latencies: Mutex<Vec<u32>>,
}

/// When lines were written: `(end, at)` marks, in order, each saying that lines below `end` were
/// on disk at `at`.
#[derive(Default)]
struct Written {
    marks: Mutex<Vec<(u64, Instant)>>,
}

/// A minimal Loki push endpoint on 127.0.0.1: HTTP/1.1 keep-alive, 204 answers, snappy +
/// protobuf bodies decoded with `ringtail::sink::proto::PushRequest` and counted by sequence
/// number. The test-suite receiver (`tests/support`) validates and stores every entry with its
/// labels, which at hundreds of MB per run would cost more CPU and memory than ringtail itself
/// on a 2-core machine; this one keeps one byte per expected line.
///
/// It answers as soon as the body is read, and holds the bodies; another thread decodes them
/// once the pushes pause for [`DECODE_AFTER_QUIET`] (at the end of a run), at the lowest CPU
/// priority: ringtail's writer waits for each answer before it sends the next batch, and on a
/// 2-core machine decoding would otherwise take CPU from ringtail, where a real Loki runs
/// elsewhere. The time a line arrived is when its body was read, whenever it is decoded.
/// A body that fails to decode is counted in `bad_requests` (and fails the run through lost
/// lines).
struct Receiver {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    /// Expects lines `0..expected`; in latency mode (`written`), up to `capacity` lines, and
    /// the count is set by [`Receiver::expect`] once writing is over.
    fn start(
        expected: u64,
        capacity: u64,
        delay: Duration,
        written: Option<Arc<Written>>,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            counts: Mutex::new(Counts {
                seen: vec![0; if capacity > 0 { capacity } else { expected } as usize],
                expected,
                ..Counts::default()
            }),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            delay,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            bodies: Mutex::new(None),
            written,
            latencies: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel::<Body>();
        *shared.bodies.lock().unwrap() = Some(tx);
        let sh = shared.clone();
        thread::spawn(move || {
            // SAFETY: plain syscalls on this thread's own id.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
            let mut seqs = Vec::new();
            let mut held: Vec<Body> = Vec::new();
            loop {
                // Decoding waits until pushes pause: while ringtail runs, this thread takes no
                // CPU from it at all (at nice 19 it still filled every gap ringtail left).
                let gone = match rx.recv_timeout(DECODE_AFTER_QUIET) {
                    Ok(b) => {
                        held.push(b);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => true,
                };
                for (at, body) in held.drain(..) {
                    match decode(&body, &mut seqs) {
                        Some((line_bytes, with_app)) => {
                            if let Some(w) = &sh.written {
                                let marks = w.marks.lock().unwrap();
                                let mut lat = sh.latencies.lock().unwrap();
                                for &seq in &seqs {
                                    let i = marks.partition_point(|m| m.0 <= seq);
                                    if let Some((_, written_at)) = marks.get(i) {
                                        let us =
                                            at.saturating_duration_since(*written_at).as_micros();
                                        lat.push(us.min(u32::MAX as u128) as u32);
                                    }
                                }
                            }
                            sh.counts.lock().unwrap().with_app += with_app;
                            record(&sh, &seqs, line_bytes, body.len(), at)
                        }
                        None => sh.counts.lock().unwrap().bad_requests += 1,
                    }
                }
                if gone {
                    return;
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

    /// Writing is over, and the receiver is to wait for `lines` in all.
    fn expect(&self, lines: u64) {
        let mut c = self.shared.counts.lock().unwrap();
        c.expected = lines;
        c.done_at = None;
        if c.done_at.is_none() && c.unique >= lines {
            c.done_at = Some(Instant::now());
            self.shared.cond.notify_all();
        }
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
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if !shared.delay.is_zero() {
            thread::sleep(shared.delay);
        }
        let answered = writer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
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
    if c.done_at.is_none() && c.unique >= c.expected {
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
    stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, s)| s)
}

/// CPU seconds of each of a process's threads, with the thread's name.
fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| stat_cpu(&fs::read_to_string(t.path().join("stat")).ok()?))
        .collect()
}

/// The name and utime + stime (seconds) in a /proc `stat` line.
fn stat_cpu(stat: &str) -> Option<(String, f64)> {
    // The name is in parentheses and may hold spaces; the fields follow it.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((
        stat[open + 1..close].to_string(),
        (utime + stime) / clock_ticks(),
    ))
}

/// The busiest thread of each role (`sealer-0` and `sealer-1` are one role), as its CPU time
/// over the run's wall time: a role near 1.0 is what caps throughput.
fn busiest(threads: &[(String, f64)], secs: f64) -> Vec<(String, f64)> {
    let mut roles: Vec<(String, f64)> = Vec::new();
    for (name, cpu) in threads {
        let role = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let share = cpu / secs;
        match roles.iter_mut().find(|(r, _)| r == role) {
            Some((_, s)) => *s = s.max(share),
            None => roles.push((role.to_string(), share)),
        }
    }
    roles.retain(|(_, s)| *s >= 0.01);
    roles.sort_by(|a, b| b.1.total_cmp(&a.1));
    roles
}

/// A field of /proc/<pid>/status in MiB: VmHWM (peak resident set) or VmRSS.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
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
    /// VmRSS 2 s after the last line arrived.
    idle_rss_mib: f64,
    lost: u64,
    dups: u64,
    with_app: u64,
    unknown: u64,
    receiver_cpu_s: f64,
    /// Busiest thread of each role: CPU time ÷ wall time.
    busiest: Vec<(String, f64)>,
    requests: u64,
    bad_requests: u64,
    body_bytes: u64,
    /// Most requests the receiver was answering at once.
    max_in_flight: usize,
    exit: Option<ExitStatus>,
    /// Latency mode: each line's latency in µs.
    latencies: Vec<u32>,
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

/// What one run varies: tailer threads (or cores), `tail.io` and the receiver's delay.
struct Case<'a> {
    threads: usize,
    io: &'a str,
    delay: Duration,
}

fn run_once(
    bin: &Path,
    tree: &Tree,
    work: &Path,
    case: &Case,
    kube: Option<&FakeKubeApi>,
    s: &Settings,
) -> RunResult {
    let Case { threads, io, delay } = *case;
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).expect("create run dir");
    let kubeconfig = work.join("kubeconfig");
    if let Some(api) = kube {
        api.write_kubeconfig(&kubeconfig);
    }
    let written = (s.rate > 0.0).then(|| Arc::new(Written::default()));
    let receiver = match &written {
        Some(w) => {
            // One line without a sequence number in each file (the receiver counts it as
            // unknown): a running node's files are known and open before the load starts. A
            // new file's first lines wait for discovery's next scan (up to 500 ms), which is
            // not the latency of a running node.
            let mut primer = String::new();
            ringtail::timefmt::format_rfc3339_ns(ringtail::timefmt::now_ns(), &mut primer);
            primer.push_str(" stdout F primer\n");
            for f in &tree.files {
                fs::write(f, &primer).expect("prime the log file");
            }
            // Generous: the shortest generated lines are longer than 40 bytes.
            let capacity = (s.rate * s.write_for.as_secs_f64() / 40.0) as u64;
            Receiver::start(u64::MAX, capacity, delay, Some(w.clone()))
        }
        None => Receiver::start(tree.lines, 0, delay, None),
    };
    let config = work.join("ringtail.yaml");
    let metrics_port = free_port();
    let yaml = config_yaml(
        tree,
        &work.join("data"),
        &receiver.url(),
        metrics_port,
        threads,
        io,
    );
    fs::write(&config, yaml).expect("write config");

    let cpu0 = self_cpu_seconds();
    let t0 = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.env_remove("KUBECONFIG");
    if s.pin {
        pin_child(&mut cmd, threads);
    }
    if kube.is_some() {
        cmd.env("KUBECONFIG", &kubeconfig);
    }
    let mut child = spawn_run(cmd, &config, work);
    let pid = child.id();
    let (mut lines, mut bytes, mut t0) = (tree.lines, tree.bytes, t0);
    if let Some(w) = &written {
        wait_ready(metrics_port, &mut child);
        // Steady state: every file found, opened and read to its end.
        thread::sleep(Duration::from_secs(2));
        t0 = Instant::now();
        (lines, bytes) = write_load(tree, s, w);
        receiver.expect(lines);
    }
    let done = receiver.wait_all(&mut child, s.timeout);
    let end = done.unwrap_or_else(Instant::now);
    // Read CPU and memory before SIGTERM: shutdown work is not throughput.
    let cpu_s = cpu_seconds(pid).unwrap_or(f64::NAN);
    let threads_cpu = thread_cpu(pid);
    let rss_mib = status_mib(pid, "VmHWM").unwrap_or(f64::NAN);
    let receiver_cpu_s = self_cpu_seconds() - cpu0;
    // Then idle: every line shipped, the files still tracked, nothing new to read.
    thread::sleep(Duration::from_secs(2));
    let idle_rss_mib = status_mib(pid, "VmRSS").unwrap_or(f64::NAN);
    let exit = stop_child(&mut child);

    let secs = end.duration_since(t0).as_secs_f64();
    let c = receiver.shared.counts.lock().unwrap();
    let lost = lines.saturating_sub(c.unique);
    if lost > 0 || !exit.is_some_and(|e| e.success()) {
        let log = fs::read_to_string(work.join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "e2e: ringtail exit {exit:?}, {lost} lines lost; last stderr lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let latencies = std::mem::take(&mut *receiver.shared.latencies.lock().unwrap());
    RunResult {
        pid,
        secs,
        mb_s: bytes as f64 / 1e6 / secs,
        lines_s: lines as f64 / secs,
        cpu_s,
        cpu_s_per_gb: cpu_s / (bytes as f64 / 1e9),
        rss_mib,
        idle_rss_mib,
        lost,
        dups: c.dups,
        with_app: c.with_app,
        unknown: c.unknown,
        receiver_cpu_s,
        busiest: busiest(&threads_cpu, secs),
        requests: c.requests,
        bad_requests: c.bad_requests,
        body_bytes: c.body_bytes,
        max_in_flight: receiver.shared.max_in_flight.load(Ordering::SeqCst),
        exit,
        latencies,
    }
}

/// Restricts the child to the last `n` CPUs this process may use (ringtail pins its tailers
/// within that set, and the receiver keeps the other cores).
fn pin_child(cmd: &mut Command, n: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes within it.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: as above; `size` is the size of `allowed`.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        eprintln!("e2e: sched_getaffinity failed; E2E_CORES needs it");
        std::process::exit(2);
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .collect();
    if n > cpus.len() {
        eprintln!(
            "e2e: E2E_CORES: {n} cores asked for, {} available",
            cpus.len()
        );
        std::process::exit(2);
    }
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in &cpus[cpus.len() - n..] {
        // SAFETY: `c` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: between fork and exec the closure makes one syscall on memory it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, size, &set) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Waits (at most 30 s) until ringtail answers /ready on its metrics port.
fn wait_ready(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let mut answer = String::new();
            let _ = c.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let _ = c.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("e2e: ringtail not ready within 30 s; writing anyway");
}

/// Latency mode: appends CRI lines to every file in turn, 4 KiB at a time, at `s.rate` for
/// `s.write_for`, marking when each write returned. Returns the lines and bytes written.
fn write_load(tree: &Tree, s: &Settings, w: &Written) -> (u64, u64) {
    let mut files: Vec<fs::File> = tree
        .files
        .iter()
        .map(|p| {
            fs::OpenOptions::new()
                .append(true)
                .open(p)
                .expect("open log file")
        })
        .collect();
    let mut gen = Gen::new(s.seed, ringtail::timefmt::now_ns(), 0);
    let mut buf = Vec::with_capacity(64 << 10);
    let t0 = Instant::now();
    let (mut bytes, mut next) = (0u64, 0usize);
    while t0.elapsed() < s.write_for {
        if bytes as f64 >= s.rate * t0.elapsed().as_secs_f64() {
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        buf.clear();
        gen.ts_ns = ringtail::timefmt::now_ns();
        while buf.len() < 4096 {
            gen.cri_line(&mut buf);
        }
        files[next].write_all(&buf).expect("append to log file");
        w.marks.lock().unwrap().push((gen.seq, Instant::now()));
        bytes += buf.len() as u64;
        next = (next + 1) % files.len();
    }
    (gen.seq, bytes)
}

/// The `p` quantile, in ms, of sorted latencies in µs.
fn percentile_ms(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Latency percentiles of one configuration's runs (median [min..max] over runs), and a
/// histogram of every line of them together.
fn latency_summary(results: &[RunResult]) -> String {
    let pct = percentile_ms;
    let mut sorted: Vec<Vec<u32>> = results.iter().map(|r| r.latencies.clone()).collect();
    for v in &mut sorted {
        v.sort_unstable();
    }
    let row = |p: f64| spread(&sorted.iter().map(|v| pct(v, p)).collect::<Vec<_>>());
    let mut out = format!(
        "\n    latency ms      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        row(0.5),
        row(0.9),
        row(0.99),
        row(0.999),
        row(1.0)
    );
    let all: Vec<u32> = sorted.concat();
    const BOUNDS_MS: [u32; 10] = [5, 10, 25, 50, 100, 150, 200, 250, 500, 1000];
    let mut below = 0usize;
    out.push_str(&format!(
        "\n    histogram of {} lines (ms: lines, cumulative %):",
        all.len()
    ));
    for (i, &b) in BOUNDS_MS.iter().chain([&u32::MAX]).enumerate() {
        let n = all.iter().filter(|&&us| us / 1000 < b).count() - below;
        below += n;
        let label = match i {
            0 => format!("< {b}"),
            10 => format!(">= {}", BOUNDS_MS[9]),
            _ => format!("{}-{b}", BOUNDS_MS[i - 1]),
        };
        out.push_str(&format!(
            "\n      {label:>9}  {n:>9}  {:>6.2}%",
            100.0 * below as f64 / all.len().max(1) as f64
        ));
    }
    out
}

/// One configuration's figures: median [min..max] of its runs.
fn summarize(title: &str, results: &[RunResult], threads: usize, snappy_mb_s: f64) -> String {
    let col = |f: fn(&RunResult) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let mb_s = col(|r| r.mb_s);
    let per_core: Vec<f64> = mb_s.iter().map(|m| m / threads as f64).collect();
    let ratio: Vec<f64> = mb_s.iter().map(|m| m / snappy_mb_s).collect();
    format!(
        "{title} ({} runs, median [min..max])\n    \
         MB/s            {}\n    \
         MB/s per tailer {}\n    \
         lines/s         {}\n    \
         CPU-s/GB        {}\n    \
         peak RSS MiB    {}\n    \
         idle RSS MiB    {} (2 s after the last line)\n    \
         receiver CPU-s  {}\n    \
         ÷ snappy alone  {} (snappy alone {:.0} MB/s)\n    \
         busiest threads {} (CPU-s ÷ wall-s, median)\n    \
         pushes at once  {} (most the receiver answered at the same time)\n    \
         lost {}  duplicates {}",
        results.len(),
        spread(&mb_s),
        spread(&per_core),
        spread(&col(|r| r.lines_s)),
        spread(&col(|r| r.cpu_s_per_gb)),
        spread(&col(|r| r.rss_mib)),
        spread(&col(|r| r.idle_rss_mib)),
        spread(&col(|r| r.receiver_cpu_s)),
        spread(&ratio),
        snappy_mb_s,
        busiest_summary(results),
        spread(&col(|r| r.max_in_flight as f64)),
        results.iter().map(|r| r.lost).sum::<u64>(),
        results.iter().map(|r| r.dups).sum::<u64>(),
    )
}

/// Each thread role's busiest share of the wall time, median over runs, busiest first.
fn busiest_summary(results: &[RunResult]) -> String {
    let mut roles: Vec<(String, f64)> = Vec::new();
    for (role, _) in results.iter().flat_map(|r| &r.busiest) {
        if roles.iter().any(|(r, _)| r == role) {
            continue;
        }
        let shares: Vec<f64> = results
            .iter()
            .map(|r| {
                r.busiest
                    .iter()
                    .find(|(n, _)| n == role)
                    .map_or(0.0, |(_, s)| *s)
            })
            .collect();
        roles.push((role.clone(), median(&shares)));
    }
    roles.sort_by(|a, b| b.1.total_cmp(&a.1));
    roles
        .iter()
        .map(|(r, s)| format!("{r} {s:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts `ringtail run --config <config>`, its stderr in `<work>/stderr.log`.
fn spawn_run(mut cmd: Command, config: &Path, work: &Path) -> Child {
    let stderr = fs::File::create(work.join("stderr.log")).expect("stderr file");
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start ringtail")
}

/// SIGTERM, then its exit within 20 s (else it is killed, and None).
fn stop_child(child: &mut Child) -> Option<ExitStatus> {
    // SAFETY: kill has no memory preconditions; the pid is our child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let exit = wait_exit(child, Duration::from_secs(20));
    if exit.is_none() {
        eprintln!("e2e: ringtail did not exit within 20 s of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
    exit
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
    if s.delays.iter().any(|d| !d.is_zero()) {
        println!(
            "e2e: the receiver answers each push after {:?} (taking turns run by run)",
            s.delays
        );
    }

    let snappy: Vec<f64> = (0..s.runs).map(|_| snappy_alone(&tree)).collect();
    let snappy_mb_s = median(&snappy);
    println!(
        "e2e: snappy alone (snap::raw::Encoder, 1 MiB blocks, same bytes): {} MB/s",
        spread(&snappy)
    );

    if !s.idle.is_empty() {
        let mut failed = false;
        let mut summary = Vec::new();
        for &mode in &s.idle {
            let mut results: Vec<Vec<idle::IdleResult>> =
                s.bins.iter().map(|_| Vec::new()).collect();
            for r in 0..s.runs {
                for (b, (name, bin)) in s.bins.iter().enumerate() {
                    let work = tmp.path().join(format!("idle-{}-{r}-{b}", mode.name()));
                    let res = idle::idle_once(bin, &tree, &work, mode, &s);
                    println!(
                        "  idle={} {name} run {}/{}: CPU {:.2} % of a core, {:.0} wakeups/s, \
                         {} syscalls/s, VmRSS {:.1} MiB, {:.2} pushes/s, {} lines, lost {}",
                        mode.name(),
                        r + 1,
                        s.runs,
                        res.cpu_pct,
                        res.wakeups_s,
                        res.syscalls_s
                            .map_or("n/a".to_string(), |n| format!("{n:.0}")),
                        res.rss_mib,
                        res.pushes_s,
                        res.lines,
                        res.lost
                    );
                    failed |= !res.ok;
                    let _ = fs::remove_dir_all(&work);
                    results[b].push(res);
                }
            }
            for (b, (name, _)) in s.bins.iter().enumerate() {
                let title = format!("idle={} threads={} {name}", mode.name(), s.threads[0]);
                summary.push(idle::idle_summary(&title, &results[b]));
            }
        }
        println!(
            "\ne2e idle summary: {} files shipped first ({:.1} MiB), then a {} s window",
            tree.files.len(),
            tree.bytes as f64 / (1 << 20) as f64,
            s.idle_secs.as_secs()
        );
        for line in &summary {
            println!("  {line}");
        }
        if failed {
            eprintln!("e2e: FAILED: lines were lost or ringtail failed");
            std::process::exit(1);
        }
        return;
    }

    let mut failed = false;
    let mut summary = Vec::new();
    let api = s.kube.contains(&true).then(|| kube_api(&tree));
    let what = if s.pin { "cores" } else { "threads" };
    for &kube in &s.kube {
        for io in &s.io {
            for &threads in &s.threads {
                // Binaries and delays take turns run by run, so drift on a shared machine
                // hits them alike. `results[d][b]`: delay d, binary b.
                let mut results: Vec<Vec<Vec<RunResult>>> = s
                    .delays
                    .iter()
                    .map(|_| s.bins.iter().map(|_| Vec::new()).collect())
                    .collect();
                let k = if kube { " kube=on" } else { "" };
                let label = |d: usize, name: &str| {
                    let n = if name.is_empty() {
                        String::new()
                    } else {
                        format!(" {name}")
                    };
                    let delay = if s.delays.len() > 1 || !s.delays[d].is_zero() {
                        format!(" delay={}ms", s.delays[d].as_millis())
                    } else {
                        String::new()
                    };
                    format!("{what}={threads} io={io}{k}{delay}{n}")
                };
                for r in 0..s.runs {
                    for (d, &delay) in s.delays.iter().enumerate() {
                        for (b, (name, bin)) in s.bins.iter().enumerate() {
                            let work = tmp
                                .path()
                                .join(format!("run-{io}-{threads}-{kube}-{r}-{d}-{b}"));
                            let res = run_once(
                                bin,
                                &tree,
                                &work,
                                &Case { threads, io, delay },
                                api.as_ref().filter(|_| kube),
                                &s,
                            );
                            println!(
                                "  {} run {}/{}: {:.2} s, {:.1} MB/s, {:.0} lines/s, CPU {:.2} s = \
                                 {:.2} CPU-s/GB, peak RSS {:.1} MiB, lost {}, dup {}, unknown {}, \
                                 with app {}, {} pushes ({:.1} MiB snappy, {} undecodable, at \
                                 most {} at once), receiver CPU {:.2} s, ringtail pid {}",
                                label(d, name),
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
                                res.max_in_flight,
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
                            results[d][b].push(res);
                        }
                    }
                }
                for (d, by_bin) in results.iter().enumerate() {
                    for (b, (name, _)) in s.bins.iter().enumerate() {
                        let mut line = summarize(&label(d, name), &by_bin[b], threads, snappy_mb_s);
                        if s.rate > 0.0 {
                            line.push_str(&latency_summary(&by_bin[b]));
                        }
                        // Run by run against a reference that ran side by side with it.
                        let pair = |of: &[RunResult], f: fn(&RunResult) -> f64| -> Vec<f64> {
                            by_bin[b].iter().zip(of).map(|(x, y)| f(x) / f(y)).collect()
                        };
                        if b > 0 {
                            line.push_str(&format!(
                                "\n    ÷ {}: MB/s {}, CPU-s/GB {}",
                                s.bins[0].0,
                                spread(&pair(&by_bin[0], |r| r.mb_s)),
                                spread(&pair(&by_bin[0], |r| r.cpu_s_per_gb))
                            ));
                        }
                        if d > 0 {
                            line.push_str(&format!(
                                "\n    ÷ delay={}ms: MB/s {}, CPU-s/GB {}",
                                s.delays[0].as_millis(),
                                spread(&pair(&results[0][b], |r| r.mb_s)),
                                spread(&pair(&results[0][b], |r| r.cpu_s_per_gb))
                            ));
                        }
                        summary.push(line);
                    }
                }
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
