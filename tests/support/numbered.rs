//! Numbered lines, for proving that nothing is lost: a [`Generator`] writes CRI lines that carry
//! a sequence number into the logs of one pod's containers at a target rate, while a "kubelet"
//! beside it rotates and compresses those logs; a [`Checker`] fed by the receiver accounts for
//! every number (missing, duplicated, unknown, or arrived with the wrong labels, timestamp or
//! metadata).
//!
//! Everything about line `seq` follows from `seq` alone (text, stream, level, container,
//! timestamp), so the checker needs no record of what was written and a run of any length costs
//! a few bytes of memory per line. The receiver hands entries to the checker as they are stored
//! ([`LokiReceiver::set_sink`]) instead of keeping them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::cri::{compress_rotated_in, format_rfc3339nano, Clock, ContainerLog, PodDir, Stream};
use super::proc::Ringtail;
use super::receiver::{LokiReceiver, Received};
use super::world::World;

/// The pod the generator writes to: `<root>/rel_numbered_u-numbered/c<i>/0.log`.
pub const NAMESPACE: &str = "rel";
pub const POD: &str = "numbered";
pub const UID: &str = "u-numbered";
/// Line `seq` is stamped [`Clock::START_NS`] + `seq` × this: unique and increasing per stream,
/// as Loki wants, and known to the checker without a record.
pub const TS_STEP_NS: i64 = 1_000;
/// Shortest and longest line text (a JSON line adds its wrapper to the longest): about 200
/// bytes on average, a typical application line.
pub const MIN_LINE: usize = 14 + 140;
pub const MAX_LINE: usize = 14 + 240 + JSON_WRAP;
const JSON_WRAP: usize = r#"{"level":"WARNING","msg":""}"#.len();
/// Raw JSON levels, one per JSON line in turn, and what ringtail must send as SM `level`
/// (contract §1: lower-case, `warning` → `warn`, `err` → `error`).
const LEVELS: [(&str, &str); 4] = [
    ("info", "info"),
    ("WARNING", "warn"),
    ("err", "error"),
    ("debug", "debug"),
];
const PAD: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_\
abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_\
abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_\
abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_\
abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

pub fn container_name(i: usize) -> String {
    format!("c{i}")
}

/// Which container prints line `seq`: round robin.
pub fn container_of(seq: u64, containers: usize) -> usize {
    (seq % containers as u64) as usize
}

/// Every seventh line goes to stderr.
pub fn stream_of(seq: u64) -> Stream {
    if seq.is_multiple_of(7) {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

/// Every tenth line is JSON with a level: `(raw, normalised)`.
pub fn level_of(seq: u64) -> Option<(&'static str, &'static str)> {
    (seq % 10 == 3).then(|| LEVELS[(seq / 10 % 4) as usize])
}

pub fn ts_of(seq: u64) -> i64 {
    Clock::START_NS + seq as i64 * TS_STEP_NS
}

/// Appends the text of line `seq`: `seq=000000123 <padding>`, or that text as the `msg` of a
/// JSON object with a level.
pub fn write_line(seq: u64, out: &mut Vec<u8>) {
    let json = level_of(seq);
    if let Some((raw, _)) = json {
        out.extend_from_slice(b"{\"level\":\"");
        out.extend_from_slice(raw.as_bytes());
        out.extend_from_slice(b"\",\"msg\":\"");
    }
    out.extend_from_slice(b"seq=");
    push_digits(out, seq, 9);
    out.push(b' ');
    let start = (seq % 64) as usize;
    let len = 140 + (seq.wrapping_mul(7919) % 101) as usize;
    out.extend_from_slice(&PAD[start..start + len]);
    if json.is_some() {
        out.extend_from_slice(b"\"}");
    }
}

/// The text of line `seq`.
pub fn line_of(seq: u64) -> String {
    let mut v = Vec::with_capacity(MAX_LINE);
    write_line(seq, &mut v);
    String::from_utf8(v).expect("ASCII")
}

/// The number a line carries (whether or not the rest of it is right).
pub fn parse_seq(line: &str) -> Option<u64> {
    let at = line.find("seq=")? + 4;
    let digits = line.get(at..at + 9)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `n` as exactly `width` decimal digits (zero-padded; higher digits dropped).
fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for i in (0..width).rev() {
        out[at + i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// CRI timestamps as containerd writes them (Go's RFC3339Nano, UTC), without formatting the
/// date for every line: the second's prefix is cached.
#[derive(Default)]
struct TsFormatter {
    sec: i64,
    prefix: Vec<u8>,
}

impl TsFormatter {
    fn push(&mut self, ts_ns: i64, out: &mut Vec<u8>) {
        let sec = ts_ns.div_euclid(1_000_000_000);
        let nanos = ts_ns.rem_euclid(1_000_000_000) as u64;
        if self.prefix.is_empty() || sec != self.sec {
            self.sec = sec;
            let whole = format_rfc3339nano(sec * 1_000_000_000, 0);
            self.prefix = whole.trim_end_matches('Z').as_bytes().to_vec();
        }
        out.extend_from_slice(&self.prefix);
        if nanos != 0 {
            out.push(b'.');
            let at = out.len();
            push_digits(out, nanos, 9);
            while out.len() > at && out[out.len() - 1] == b'0' {
                out.pop();
            }
        }
        out.push(b'Z');
    }
}

/// One CRI record for line `seq`, as containerd writes it.
fn write_record(seq: u64, ts: &mut TsFormatter, out: &mut Vec<u8>) {
    ts.push(ts_of(seq), out);
    out.push(b' ');
    out.extend_from_slice(stream_of(seq).as_str().as_bytes());
    out.extend_from_slice(b" F ");
    write_line(seq, out);
    out.push(b'\n');
}

/// What the generator does.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub containers: usize,
    /// Target rate, all containers together (CRI bytes, records included).
    pub bytes_per_sec: u64,
    /// kubelet's `containerLogMaxSize`: a log at least this big at a check is rotated.
    pub max_size: u64,
    /// kubelet's `containerLogMonitorInterval`: how often it checks sizes. So it is also the
    /// least time a rotated file stays uncompressed: the time a tailer has to find and open it,
    /// or, after a crash, to come back to it.
    pub monitor: Duration,
    /// kubelet's `containerLogMaxFiles`.
    pub max_files: usize,
}

/// Something the "kubelet" did, for the report and for explaining missing lines.
#[derive(Clone, Debug)]
pub enum FileEvent {
    /// `<n>.log` was renamed to `to`; lines from `next_seq` on go to the fresh `<n>.log`.
    Rotated {
        at: Instant,
        container: usize,
        to: PathBuf,
        next_seq: u64,
    },
    /// `path` was gzipped to `path.gz` and removed: read again only by a restart that finds its
    /// position's file gone and the `.gz` holding it.
    Compressed {
        at: Instant,
        container: usize,
        path: PathBuf,
    },
}

/// One container's log and the first line number not yet written to it.
struct Slot {
    log: ContainerLog,
    next_seq: u64,
}

struct GenShared {
    stop: AtomicBool,
    /// Throttle: lines the receiver has stored, and how many bytes written but not yet stored
    /// make the writer pause.
    throttle: Option<(Arc<AtomicU64>, u64)>,
    /// Time the writer spent paused by the throttle, in ms.
    throttled_ms: AtomicU64,
    /// Lines written so far: numbers `0..lines` are on disk.
    lines: AtomicU64,
    bytes: AtomicU64,
    slots: Vec<Mutex<Slot>>,
    events: Mutex<Vec<FileEvent>>,
    /// `(lines written, when)`, about every 50 ms: when line `n` was written, to within that.
    marks: Mutex<Vec<(u64, Instant)>>,
}

impl GenShared {
    fn slot(&self, c: usize) -> MutexGuard<'_, Slot> {
        self.slots[c].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes numbered lines at a target rate from a background thread (containerd), with a second
/// thread rotating the logs like kubelet. Stop it with [`stop`](Self::stop).
pub struct Generator {
    cfg: GenConfig,
    shared: Arc<GenShared>,
    started: Instant,
    threads: Vec<JoinHandle<()>>,
}

/// What a generator did.
#[derive(Clone, Debug)]
pub struct GenReport {
    pub cfg: GenConfig,
    /// Lines written: numbers `0..lines`.
    pub lines: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Time the writer was paused because the receiver was too far behind.
    pub throttled: Duration,
    pub events: Vec<FileEvent>,
    /// `(lines written, when)`, about every 50 ms.
    pub marks: Vec<(u64, Instant)>,
}

impl Generator {
    /// Creates the pod's containers under `pods_root` and starts writing at once.
    pub fn start(pods_root: &std::path::Path, cfg: GenConfig) -> Generator {
        Generator::start_with(pods_root, cfg, None)
    }

    /// [`start`](Self::start), pausing whenever more than `max_ahead` bytes written have not
    /// reached the receiver (`stored`: lines stored, see [`Checker::progress`]). A collector
    /// that stays behind by more than kubelet keeps rotated files loses lines by design (the
    /// files are the buffer); where the whole pipeline
    /// cannot sustain the target rate (a debug build on a small machine), this keeps a scenario
    /// about crashes from turning into one about throughput.
    pub fn start_throttled(
        pods_root: &std::path::Path,
        cfg: GenConfig,
        stored: Arc<AtomicU64>,
        max_ahead: u64,
    ) -> Generator {
        Generator::start_with(pods_root, cfg, Some((stored, max_ahead)))
    }

    fn start_with(
        pods_root: &std::path::Path,
        cfg: GenConfig,
        throttle: Option<(Arc<AtomicU64>, u64)>,
    ) -> Generator {
        assert!(cfg.containers > 0 && cfg.bytes_per_sec > 0);
        let pod = PodDir::new(pods_root, NAMESPACE, POD, UID);
        let slots = (0..cfg.containers)
            .map(|c| {
                let mut log = pod.container(&container_name(c));
                log.set_max_files(cfg.max_files);
                Mutex::new(Slot { log, next_seq: 0 })
            })
            .collect();
        let shared = Arc::new(GenShared {
            stop: AtomicBool::new(false),
            throttle,
            throttled_ms: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            slots,
            events: Mutex::new(Vec::new()),
            marks: Mutex::new(vec![(0, Instant::now())]),
        });
        let started = Instant::now();
        let w = (shared.clone(), cfg.clone());
        let writer = thread::Builder::new()
            .name("gen-containerd".into())
            .spawn(move || containerd(&w.0, &w.1, started))
            .expect("spawn generator");
        let k = (shared.clone(), cfg.clone());
        let kubelet = thread::Builder::new()
            .name("gen-kubelet".into())
            .spawn(move || kubelet(&k.0, &k.1))
            .expect("spawn kubelet");
        Generator {
            cfg,
            shared,
            started,
            threads: vec![writer, kubelet],
        }
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.shared.lines.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    /// Rotations so far.
    pub fn rotations(&self) -> usize {
        let ev = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        ev.iter()
            .filter(|e| matches!(e, FileEvent::Rotated { .. }))
            .count()
    }

    /// Stops writing and rotating; every line counted in the report is on disk.
    pub fn stop(mut self) -> GenReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("generator thread panicked");
        }
        GenReport {
            cfg: self.cfg.clone(),
            lines: self.shared.lines.load(Ordering::SeqCst),
            bytes: self.shared.bytes.load(Ordering::SeqCst),
            elapsed: self.started.elapsed(),
            throttled: Duration::from_millis(self.shared.throttled_ms.load(Ordering::SeqCst)),
            events: self
                .shared
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            marks: self
                .shared
                .marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Bytes produced per write: containerd writes each record with its own `write(2)`; writing a
/// few records at once keeps the generator's CPU to a fraction of ringtail's (this is a debug
/// build on a small machine) and changes nothing for a reader, which must handle a record cut
/// by the end of a read either way.
const WRITE_BYTES: usize = 64 << 10;

/// The writer: numbers in order, round robin over the containers, paced to the target rate.
fn containerd(shared: &GenShared, cfg: &GenConfig, started: Instant) {
    let n = cfg.containers;
    let mut bufs: Vec<Vec<u8>> = (0..n)
        .map(|_| Vec::with_capacity(WRITE_BYTES + MAX_LINE + 64))
        .collect();
    let mut ts = TsFormatter::default();
    let mut seq = 0u64;
    let mut bytes = 0u64;
    // Time paused by the throttle does not count towards the rate: no burst after a pause.
    let mut paused = Duration::ZERO;
    let mut last_mark = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        if last_mark.elapsed() >= Duration::from_millis(50) {
            last_mark = Instant::now();
            shared
                .marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((seq, last_mark));
        }
        if let Some((stored, max_ahead)) = &shared.throttle {
            let behind = seq.saturating_sub(stored.load(Ordering::SeqCst));
            if seq > 0 && behind * bytes / seq > *max_ahead {
                let t = Instant::now();
                thread::sleep(Duration::from_millis(2));
                paused += t.elapsed();
                shared
                    .throttled_ms
                    .store(paused.as_millis() as u64, Ordering::SeqCst);
                continue;
            }
        }
        let due = ((started.elapsed() - paused).as_secs_f64() * cfg.bytes_per_sec as f64) as u64;
        if bytes >= due {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        // At most one buffer per container per round, so that rotation and the stop flag are
        // never kept waiting long.
        let target = due.min(bytes + (WRITE_BYTES * n) as u64);
        while bytes < target {
            let buf = &mut bufs[container_of(seq, n)];
            let before = buf.len();
            write_record(seq, &mut ts, buf);
            bytes += (buf.len() - before) as u64;
            seq += 1;
        }
        for (c, buf) in bufs.iter_mut().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let mut slot = shared.slot(c);
            slot.log.write_raw(buf);
            slot.next_seq = seq;
            buf.clear();
        }
        shared.lines.store(seq, Ordering::SeqCst);
        shared.bytes.store(bytes, Ordering::SeqCst);
    }
}

/// kubelet's container log manager: every `monitor`, each container whose log is at least
/// `max_size` is rotated: older rotated files are compressed (outside the writer's lock:
/// containerd does not wait for kubelet's gzip), `N.log` is renamed, and containerd reopens a
/// fresh `N.log` a moment later (writes in between land in the renamed file, as they do).
fn kubelet(shared: &GenShared, cfg: &GenConfig) {
    let mut next_check = Instant::now() + cfg.monitor;
    loop {
        while Instant::now() < next_check {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        next_check += cfg.monitor;
        for c in 0..cfg.containers {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let (dir, restart, max_files, size) = {
                let s = shared.slot(c);
                (
                    s.log.dir().to_path_buf(),
                    s.log.restart_count(),
                    s.log.max_files(),
                    s.log.size(),
                )
            };
            if size < cfg.max_size {
                continue;
            }
            for path in compress_rotated_in(&dir, restart, max_files) {
                let ev = FileEvent::Compressed {
                    at: Instant::now(),
                    container: c,
                    path,
                };
                shared
                    .events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(ev);
            }
            let to = shared.slot(c).log.rotate_rename();
            thread::sleep(Duration::from_millis(2));
            let ev = {
                let mut s = shared.slot(c);
                s.log.reopen();
                FileEvent::Rotated {
                    at: Instant::now(),
                    container: c,
                    to,
                    next_seq: s.next_seq,
                }
            };
            shared
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ev);
        }
    }
}

impl GenReport {
    pub fn rotations(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, FileEvent::Rotated { .. }))
            .count()
    }

    pub fn compressions(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, FileEvent::Compressed { .. }))
            .count()
    }

    /// When line `seq` was written (to within ~50 ms; the end of the run for a line never
    /// written).
    pub fn written_at(&self, seq: u64) -> Instant {
        let i = self.marks.partition_point(|&(n, _)| n <= seq);
        self.marks
            .get(i)
            .map_or(self.marks[0].1 + self.elapsed, |&(_, at)| at)
    }

    /// Achieved rate, MB/s.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    /// Which file line `seq` was written to, and what became of that file.
    pub fn file_of(&self, seq: u64) -> String {
        let c = container_of(seq, self.cfg.containers);
        let rotated = self.events.iter().find_map(|e| match e {
            FileEvent::Rotated {
                container,
                to,
                next_seq,
                at,
            } if *container == c && seq < *next_seq => Some((to, *at)),
            _ => None,
        });
        let Some((to, rotated_at)) = rotated else {
            return format!("{}/0.log (never rotated)", container_name(c));
        };
        let mut name = to.display().to_string();
        let compressed = self.events.iter().find_map(|e| match e {
            FileEvent::Compressed { path, at, .. } if path == to => Some(*at),
            _ => None,
        });
        if let Some(at) = compressed {
            let _ = write!(
                name,
                " (compressed {:?} after its rotation)",
                at.saturating_duration_since(rotated_at)
            );
        }
        name
    }
}

/// One ringtail process, as the checker sees it.
#[derive(Clone, Debug)]
pub struct Run {
    /// Connections to the receiver numbered from here on are this process's.
    pub first_conn: u64,
    pub started: Instant,
    /// When it was killed (`crashed`) or stopped.
    pub ended: Option<Instant>,
    pub crashed: bool,
    /// The lowest line number not stored when it ended: how far behind the writer it was.
    pub low_at_end: u64,
}

/// Accounts for every numbered line the receiver stored.
pub struct Checker {
    containers: usize,
    labels: Vec<BTreeMap<String, String>>,
    /// Per number: times stored (saturating), and which run stored it last and in which
    /// request ([`Received::batch`]), to tell a re-send after a crash from a bug.
    seen: Vec<u8>,
    last_run: Vec<u16>,
    last_batch: Vec<u32>,
    runs: Vec<Run>,
    stored: u64,
    /// Numbers stored at least once, also shared with a throttled generator.
    distinct: u64,
    /// The lowest number not stored yet.
    low: u64,
    progress: Arc<AtomicU64>,
    unknown: u64,
    unknown_samples: Vec<String>,
    wrong: u64,
    wrong_samples: Vec<String>,
    /// Per run: duplicates caused by its crash (lines it stored, sent again by a later run),
    /// and the requests that had stored them.
    dups: Vec<u64>,
    dup_batches: Vec<BTreeSet<u32>>,
    /// Duplicates no crash explains: sent twice by one run, or again after a graceful stop.
    bad_dups: u64,
    bad_dup_samples: Vec<String>,
    /// Per container: the run and number of the last line stored, and the lines stored after a
    /// higher number of the same container by the same run (out of order, unless a rotation
    /// had two files of the container read side by side).
    last_of: Vec<Option<(usize, u64)>>,
    backwards: u64,
    backwards_samples: Vec<String>,
    scratch: Vec<u8>,
}

const SAMPLES: usize = 10;

impl Checker {
    /// A checker fed by `rx`: every entry it stores from now on is checked and then dropped.
    pub fn attach(rx: &LokiReceiver, containers: usize) -> Arc<Mutex<Checker>> {
        let checker = Arc::new(Mutex::new(Checker::new(containers)));
        let c = checker.clone();
        rx.set_sink(move |e, conn| c.lock().unwrap_or_else(|e| e.into_inner()).take(e, conn));
        checker
    }

    pub fn new(containers: usize) -> Checker {
        let labels = (0..containers)
            .map(|c| {
                let name = container_name(c);
                [
                    ("namespace", NAMESPACE.to_string()),
                    ("pod", POD.to_string()),
                    ("container", name.clone()),
                    ("node", "test-node".to_string()),
                    ("job", format!("{NAMESPACE}/{name}")),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            })
            .collect();
        Checker {
            containers,
            labels,
            seen: Vec::new(),
            last_run: Vec::new(),
            last_batch: Vec::new(),
            runs: Vec::new(),
            stored: 0,
            distinct: 0,
            low: 0,
            progress: Arc::new(AtomicU64::new(0)),
            unknown: 0,
            unknown_samples: Vec::new(),
            wrong: 0,
            wrong_samples: Vec::new(),
            dups: Vec::new(),
            dup_batches: Vec::new(),
            bad_dups: 0,
            bad_dup_samples: Vec::new(),
            last_of: vec![None; containers],
            backwards: 0,
            backwards_samples: Vec::new(),
            scratch: Vec::with_capacity(MAX_LINE),
        }
    }

    /// A ringtail process is about to start; `next_conn` is the receiver's
    /// [`connections`](LokiReceiver::connections) now (the previous process is gone, so every
    /// connection from this number on is the new one's).
    pub fn run_starting(&mut self, next_conn: u64) {
        self.runs.push(Run {
            first_conn: next_conn,
            started: Instant::now(),
            ended: None,
            crashed: false,
            low_at_end: 0,
        });
        self.dups.push(0);
        self.dup_batches.push(BTreeSet::new());
    }

    /// The current process was killed (`crashed`) or has stopped, `at` the instant it was
    /// gone: taken before this checker's lock, which the receiver may hold for a while.
    pub fn run_ended(&mut self, crashed: bool, at: Instant) {
        let r = self.runs.last_mut().expect("a run was started");
        r.ended = Some(at);
        r.crashed = crashed;
        r.low_at_end = self.low;
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Entries stored so far.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// Lines stored at least once, updated as they arrive: for
    /// [`Generator::start_throttled`].
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// Numbers stored at least once: when it reaches the lines written (and nothing
    /// [`beyond`](Self::beyond) them arrived), every line has.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Numbers of `0..lines` that have not arrived, as runs of one container's consecutive
    /// lines: `(first, last, count)`, numbers `first, first + containers, ..., last`.
    pub fn missing_ranges(&self, lines: u64) -> Vec<(u64, u64, u64)> {
        let step = self.containers as u64;
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for c in 0..step {
            let mut open: Option<(u64, u64, u64)> = None;
            for s in (c..lines).step_by(step as usize) {
                if self.seen.get(s as usize).is_some_and(|&n| n > 0) {
                    out.extend(open.take());
                    continue;
                }
                open = Some(match open {
                    Some((first, _, n)) => (first, s, n + 1),
                    None => (s, s, 1),
                });
            }
            out.extend(open);
        }
        out.sort();
        out
    }

    /// Numbers at or past `lines` that arrived (the writer never wrote them).
    pub fn beyond(&self, lines: u64) -> u64 {
        self.seen
            .iter()
            .skip(lines as usize)
            .filter(|&&n| n > 0)
            .count() as u64
    }

    /// Arrivals beyond the first, in all.
    pub fn duplicates(&self) -> u64 {
        self.dups.iter().sum()
    }

    /// Duplicates the crash of run `r` caused: lines it stored that a later run sent again
    /// (the run right after, or a later one when those in between were killed before they got
    /// that far).
    pub fn duplicates_from_crash(&self, r: usize) -> u64 {
        self.dups.get(r).copied().unwrap_or(0)
    }

    /// How long before the crash of run `r` ringtail had the answer to the oldest push whose
    /// lines were sent again after it (`answered`: [`LokiReceiver::answered`]). A push the
    /// crash came before the answer of is in flight: its re-send is due, and counts zero.
    pub fn oldest_duplicate_from_crash(&self, r: usize, answered: &[Option<Instant>]) -> Duration {
        let Some(end) = self.runs.get(r).and_then(|run| run.ended) else {
            return Duration::ZERO;
        };
        self.dup_batches[r]
            .iter()
            .filter_map(|&b| answered.get(b as usize).copied().flatten())
            .map(|at| end.saturating_duration_since(at))
            .max()
            .unwrap_or_default()
    }

    pub fn bad_duplicates(&self) -> (u64, &[String]) {
        (self.bad_dups, &self.bad_dup_samples)
    }

    /// Lines a run stored after a later line of the same container.
    pub fn backwards(&self) -> (u64, &[String]) {
        (self.backwards, &self.backwards_samples)
    }

    pub fn unknown(&self) -> (u64, &[String]) {
        (self.unknown, &self.unknown_samples)
    }

    pub fn wrong(&self) -> (u64, &[String]) {
        (self.wrong, &self.wrong_samples)
    }

    fn run_of(&self, conn: u64) -> usize {
        self.runs
            .iter()
            .rposition(|r| r.first_conn <= conn)
            .unwrap_or(0)
    }

    fn take(&mut self, e: Received, conn: u64) {
        if self.runs.is_empty() {
            // Fed before any run was announced: count it as the first one's.
            self.run_starting(0);
        }
        self.stored += 1;
        let Some(seq) = parse_seq(&e.line) else {
            self.unknown += 1;
            sample(&mut self.unknown_samples, format!("{:?}", e.line));
            return;
        };
        self.scratch.clear();
        write_line(seq, &mut self.scratch);
        if e.line.as_bytes() != self.scratch.as_slice() {
            self.unknown += 1;
            sample(
                &mut self.unknown_samples,
                format!("{:?} (line {seq} is {:?})", e.line, line_of(seq)),
            );
            return;
        }
        let c = container_of(seq, self.containers);
        let stream = stream_of(seq).as_str();
        let level = level_of(seq).map(|(_, norm)| norm);
        let meta_ok = e.metadata.len() == 1 + usize::from(level.is_some())
            && e.metadata.get("stream").map(String::as_str) == Some(stream)
            && e.metadata.get("level").map(String::as_str) == level;
        if e.labels != self.labels[c] || e.ts_ns != ts_of(seq) || !meta_ok {
            self.wrong += 1;
            sample(
                &mut self.wrong_samples,
                format!(
                    "line {seq}: labels {:?} ts {} metadata {:?}; want container {} ts {} \
                     stream {stream} level {level:?}",
                    e.labels,
                    e.ts_ns,
                    e.metadata,
                    container_name(c),
                    ts_of(seq)
                ),
            );
        }
        let i = seq as usize;
        if i >= self.seen.len() {
            let len = (i + 1).max(self.seen.len() * 2).max(1 << 16);
            self.seen.resize(len, 0);
            self.last_run.resize(len, 0);
            self.last_batch.resize(len, 0);
        }
        let run = self.run_of(conn);
        if self.seen[i] == 0 {
            self.distinct += 1;
            self.progress.store(self.distinct, Ordering::SeqCst);
        } else {
            let prev = self.last_run[i] as usize;
            let crash = self.runs[prev]
                .ended
                .filter(|_| prev < run && self.runs[prev].crashed);
            self.dups[prev] += 1;
            if crash.is_some() {
                self.dup_batches[prev].insert(self.last_batch[i]);
            } else {
                self.bad_dups += 1;
                sample(
                    &mut self.bad_dup_samples,
                    format!("line {seq} stored by run {prev}, again by run {run}"),
                );
            }
        }
        if let Some((r, last)) = self.last_of[c] {
            if r == run && seq < last {
                self.backwards += 1;
                sample(
                    &mut self.backwards_samples,
                    format!("line {seq} after line {last} of {}", container_name(c)),
                );
            }
        }
        self.last_of[c] = Some((run, seq));
        self.seen[i] = self.seen[i].saturating_add(1);
        self.last_run[i] = run as u16;
        self.last_batch[i] = e.batch as u32;
        while self.seen.get(self.low as usize).is_some_and(|&n| n > 0) {
            self.low += 1;
        }
    }
}

fn sample(v: &mut Vec<String>, s: String) {
    if v.len() < SAMPLES {
        v.push(s);
    }
}

/// A world whose receiver feeds a [`Checker`], and the ringtail runs on it. The scenarios add
/// their own steps (crashes, writers) in their files.
pub struct Bench {
    pub w: World,
    pub checker: Arc<Mutex<Checker>>,
    /// Lines added to the test config's `loki:` block (indented as there).
    pub loki_keys: String,
    /// Top-level config added at the end (a `tail:` block), empty by default.
    pub extra: String,
}

/// The scenarios' `loki.max_in_flight`, and their `min_in_flight` too: the concurrency is
/// fixed at its maximum, so crashes, rotations and outages meet every lane pushing.
pub const IN_FLIGHT: usize = 8;

impl Bench {
    /// For `containers` numbered containers. The bounds the scenarios derive assume the test
    /// config's 1 MiB batches and 5 s Loki timeout: checked here.
    pub fn new(containers: usize) -> Bench {
        let w = World::new();
        let cfg = w.config("");
        assert!(
            cfg.contains("batch: { max_bytes: 1MiB,") && cfg.contains("timeout: 5s"),
            "the scenarios' bounds must follow the test config:\n{cfg}"
        );
        let checker = Checker::attach(&w.rx, containers);
        Bench {
            w,
            checker,
            loki_keys: format!("max_in_flight: {IN_FLIGHT}\n  min_in_flight: {IN_FLIGHT}\n"),
            extra: String::new(),
        }
    }

    pub fn checker(&self) -> MutexGuard<'_, Checker> {
        self.checker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts ringtail on the same data dir as every run before, and waits for /ready.
    pub fn start(&mut self) -> Ringtail {
        let next_conn = self.w.rx.connections();
        self.checker().run_starting(next_conn);
        let cfg = self.w.config_with_loki(&self.loki_keys) + &self.extra;
        self.w.start_config(&cfg)
    }
}
