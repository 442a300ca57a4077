//! A tailer thread: owns a share of the files, and takes turns reading them.
//!
//! Each turn picks the files that are due, up to [`BATCH`] of them starting where the last turn
//! stopped (so one chatty container cannot starve the others), reads at most one buffer of each
//! in a single io_uring submission, and turns every buffer into one chunk for the ring. A file at
//! its end is checked again after a short, growing pause (25 ms up to 200 ms). Open descriptors
//! are capped; past the cap the least recently read idle file is closed, and reopened by
//! identity when discovery sees it grow.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use prometheus_client::metrics::counter::Counter;

use crate::entry::{AdvanceKind, FileKey};
use crate::process::Processor;
use crate::ring::RingTx;
use crate::shutdown::Stop;
use crate::sources::files::discover::Control;
use crate::sources::files::io::{BatchIo, ReadReq};
use crate::sources::files::tail::{Life, Tail, PARTIAL_FLUSH};
use crate::sources::files::Format;
use crate::telemetry::metrics::{Metrics, METRICS};

/// Files read per submission, and read buffers per thread.
pub const BATCH: usize = 16;
/// Bytes read per file per turn: the fairness quantum, and the longest line kept whole without
/// a CRI split (containerd splits at 16 KiB).
pub const READ_SIZE: usize = 128 << 10;

const MAX_IDLE: Duration = Duration::from_millis(200);
/// Longest wait for a control message while no file is due (watched files may sleep long).
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Read errors in a row after which a file that is gone is given up (and the rest counted lost).
const MAX_ERRORS: u32 = 10;

/// What one read came to.
enum Turn {
    Progress,
    /// Only bytes of an unterminated line: nothing moved.
    NoProgress,
    Stop,
}

pub struct Tailer {
    name: String,
    files: Vec<Tail>,
    index: HashMap<FileKey, usize>,
    io: BatchIo,
    proc: Processor,
    bufs: Vec<Vec<u8>>,
    ctl: Receiver<Control>,
    ring: RingTx,
    max_open: usize,
    open: usize,
    cursor: usize,
    /// Gone while closed: nothing more can be read; send their `Done` advance.
    to_finish: Vec<FileKey>,
    /// Replaced by a new file with the same identity (a reused inode): send their `Done`.
    retired: Vec<Tail>,
    /// Just added: send their start position, so that the positions file knows every file
    /// from the moment it is tracked (a restart then never mistakes it for an old rotation).
    to_register: Vec<FileKey>,
    /// `ringtail_read_{bytes,lines}_total` per source, indexed by [`Format`].
    read: [(Counter, Counter); 2],
}

impl Tailer {
    pub fn new(
        name: String,
        io: BatchIo,
        proc: Processor,
        ctl: Receiver<Control>,
        ring: RingTx,
        max_open: usize,
    ) -> Tailer {
        Tailer {
            name,
            files: Vec::new(),
            index: HashMap::new(),
            io,
            proc,
            bufs: (0..BATCH).map(|_| vec![0u8; READ_SIZE]).collect(),
            ctl,
            ring,
            max_open: max_open.max(1),
            open: 0,
            cursor: 0,
            to_finish: Vec::new(),
            retired: Vec::new(),
            to_register: Vec::new(),
            read: [Format::Cri, Format::Plain].map(|f| {
                (
                    Metrics::source_counter(&METRICS.read_bytes, f.source()),
                    Metrics::source_counter(&METRICS.read_lines, f.source()),
                )
            }),
        }
    }

    pub fn run(mut self, stop: &Stop) {
        log::debug!("{}: started", self.name);
        let mut picked: Vec<usize> = Vec::with_capacity(BATCH);
        let mut results = Vec::with_capacity(BATCH);
        loop {
            while let Ok(msg) = self.ctl.try_recv() {
                self.control(msg);
            }
            if stop.stopping() {
                break;
            }
            for key in std::mem::take(&mut self.to_finish) {
                if !self.finish(key, stop) {
                    return;
                }
            }
            for t in std::mem::take(&mut self.retired) {
                if !self.finish_tail(t, stop) {
                    return;
                }
            }
            for key in std::mem::take(&mut self.to_register) {
                if let Some(&i) = self.index.get(&key) {
                    let t = &mut self.files[i];
                    let mut chunk = self.ring.chunk(t.labels.clone());
                    t.set_advance(&mut chunk, AdvanceKind::Continue);
                    if !self.ring.send(chunk, stop) {
                        return;
                    }
                }
            }
            let now = Instant::now();
            self.pick(now, &mut picked);
            if picked.is_empty() {
                self.ring.set_busy(false);
                let next = self
                    .files
                    .iter()
                    .map(|t| t.next_check)
                    .min()
                    .map_or(MAX_WAIT, |t| t.saturating_duration_since(now))
                    .clamp(Duration::from_millis(1), MAX_WAIT);
                match self.ctl.recv_timeout(next) {
                    Ok(msg) => self.control(msg),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        if self.files.is_empty() {
                            break;
                        }
                    }
                }
                continue;
            }
            // Invariant: every picked file is open (see `pick`), so request `i` reads file
            // `picked[i]` into buffer `i`.
            let mut reqs: Vec<ReadReq> = Vec::with_capacity(picked.len());
            for (&fi, buf) in picked.iter().zip(self.bufs.iter_mut()) {
                let t = &self.files[fi];
                let fd = t.file.as_ref().map_or(-1, |f| f.as_raw_fd());
                reqs.push(ReadReq {
                    fd,
                    offset: t.read_offset,
                    buf: &mut buf[..],
                });
            }
            self.io.read_batch(&mut reqs, &mut results);
            drop(reqs);
            let mut any_data = false;
            let mut finished: Vec<FileKey> = Vec::new();
            for (slot, &fi) in picked.iter().enumerate() {
                let result = std::mem::replace(&mut results[slot], Ok(0));
                if let Ok(n @ 1..) = result {
                    // What was read is on disk: the read lag counts it before the next scan.
                    // Not at the end (0 bytes): that would put back a size above a truncated
                    // file's, which discovery's stat had just seen, and hide the truncation.
                    let t = &self.files[fi];
                    t.size_hint.fetch_max(
                        t.read_offset + n as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                match result {
                    Ok(0) => {
                        let t = &mut self.files[fi];
                        t.errors = 0;
                        if t.life == Life::Draining {
                            finished.push(t.key);
                        } else if !self.check_truncated(fi) {
                            if !self.flush_quiet_partials(fi, stop) {
                                return;
                            }
                            self.files[fi].idle(now);
                        }
                    }
                    Ok(n) => {
                        self.files[fi].errors = 0;
                        match self.process(fi, slot, n, stop) {
                            Turn::Stop => return,
                            Turn::Progress => {
                                any_data = true;
                                self.ring.set_busy(true);
                            }
                            Turn::NoProgress => {
                                let t = &mut self.files[fi];
                                if t.life == Life::Draining {
                                    if !self.drain_rest(fi, slot, n, stop) {
                                        return;
                                    }
                                    finished.push(self.files[fi].key);
                                } else {
                                    // An unterminated line at the end: wait for the rest.
                                    t.idle(now);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let t = &mut self.files[fi];
                        t.errors += 1;
                        METRICS.file_event("read_error");
                        if t.errors == 1 || t.errors == MAX_ERRORS {
                            log::warn!(
                                "{}: cannot read {}: {e}; retrying ({} errors in a row)",
                                self.name,
                                t.path.display(),
                                t.errors
                            );
                        }
                        if t.life == Life::Draining && t.errors >= MAX_ERRORS {
                            let lost = t.size_seen().saturating_sub(t.read_offset);
                            METRICS.lost("read_error", lost);
                            finished.push(t.key);
                        }
                        t.next_check = now + MAX_IDLE;
                    }
                }
            }
            for key in finished {
                if !self.finish(key, stop) {
                    return;
                }
            }
            if !any_data && !self.files.iter().any(|t| t.next_check <= now) {
                self.ring.set_busy(false);
            }
        }
        log::debug!("{}: stopped", self.name);
    }

    /// Turns the bytes read for file `fi` (in buffer `slot`) into a chunk and sends it.
    fn process(&mut self, fi: usize, slot: usize, n: usize, stop: &Stop) -> Turn {
        let t = &mut self.files[fi];
        let mut chunk = self.ring.chunk(t.labels.clone());
        // Room for the lines and their metadata values up front: grown by doubling, a full read
        // (128 KiB) plus a few bytes of levels would leave a 256 KiB buffer in every pooled chunk.
        // A pooled buffer far larger than this read is let go: with thousands of files most
        // reads are small, and the writer holds many chunks at once (open batches of its lanes).
        let want = n + n / 16;
        if chunk.data.capacity() > 2 * want + (16 << 10) {
            chunk.data = Vec::with_capacity(want);
        }
        chunk.data.reserve(want);
        let before = self.proc.counts;
        let offset = t.read_offset;
        t.consume(
            &self.bufs[slot][..n],
            n == READ_SIZE,
            &mut self.proc,
            &mut chunk,
        );
        self.proc.end_chunk();
        if t.read_offset == offset {
            // Only an unterminated line: nothing to send yet.
            self.ring.recycle(chunk);
            return Turn::NoProgress;
        }
        t.last_read = Instant::now();
        t.idle_rounds = 0;
        t.next_check = t.last_read;
        let format = self.files[fi].format;
        self.count(before, n, format);
        if self.send(chunk, stop) {
            Turn::Progress
        } else {
            Turn::Stop
        }
    }

    /// Adds what the processor counted since `before`, and `bytes` read, to the metrics.
    fn count(&mut self, before: crate::process::LineCounts, bytes: usize, format: Format) {
        let after = self.proc.counts;
        let (read_bytes, read_lines) = &self.read[format as usize];
        read_bytes.inc_by(bytes as u64);
        read_lines.inc_by(after.lines - before.lines);
        METRICS.add_line_counts(before, after);
    }

    /// A gone file whose last bytes have no newline: they are its last line.
    fn drain_rest(&mut self, fi: usize, slot: usize, n: usize, stop: &Stop) -> bool {
        let t = &mut self.files[fi];
        let mut chunk = self.ring.chunk(t.labels.clone());
        let before = self.proc.counts;
        t.consume_rest(&self.bufs[slot][..n], &mut self.proc, &mut chunk);
        let format = t.format;
        self.proc.end_chunk();
        self.count(before, n, format);
        self.send(chunk, stop)
    }

    /// Sends a partial line that has waited [`PARTIAL_FLUSH`] for its end.
    fn flush_quiet_partials(&mut self, fi: usize, stop: &Stop) -> bool {
        let t = &mut self.files[fi];
        if !t.has_pending() || t.last_read.elapsed() < PARTIAL_FLUSH {
            return true;
        }
        let mut chunk = self.ring.chunk(t.labels.clone());
        let before = self.proc.counts;
        let n = t.flush_partials(&mut self.proc, &mut chunk);
        let format = t.format;
        self.proc.end_chunk();
        METRICS.file_event_n("partial_flushed", n as u64);
        self.count(before, 0, format);
        self.send(chunk, stop)
    }

    /// A file at its end whose size, as discovery saw it, is below what was read: truncated
    /// (copytruncate), or discovery's stat is older than the last read. The open descriptor
    /// decides. Returns true when it was truncated (and the file starts again at 0).
    fn check_truncated(&mut self, fi: usize) -> bool {
        let t = &mut self.files[fi];
        // Woken (a write event, or a scan that saw its size change): the size seen may be
        // older than the truncation, so the descriptor decides.
        let woken = std::mem::take(&mut t.woken);
        if !woken && t.size_seen() >= t.read_offset {
            let seen = t.size_seen();
            t.note_size(seen);
            return false;
        }
        let size = match &t.file {
            Some(f) => match f.metadata() {
                Ok(m) => m.len(),
                Err(_) => return false,
            },
            None => t.size_seen(),
        };
        if size >= t.read_offset {
            return false;
        }
        let lost = t.truncated(size);
        METRICS.file_event("truncated");
        METRICS.lost("truncated", lost);
        log::warn!(
            "{}: {} was truncated to {size} bytes; reading it again from the start (at least \
             {lost} bytes written before the truncation could not be read)",
            self.name,
            t.path.display()
        );
        t.next_check = Instant::now();
        true
    }

    fn send(&mut self, chunk: crate::entry::Chunk, stop: &Stop) -> bool {
        if chunk.entries.is_empty()
            && chunk
                .advance
                .as_ref()
                .and_then(|a| a.as_file())
                .is_some_and(|a| a.kind == AdvanceKind::Continue && a.from == a.to)
        {
            self.ring.recycle(chunk);
            return true;
        }
        self.ring.send(chunk, stop)
    }

    /// A drained file: send its last advance (`Done`, so its position is forgotten once acked)
    /// and close it.
    fn finish(&mut self, key: FileKey, stop: &Stop) -> bool {
        match self.remove(key) {
            Some(t) => self.finish_tail(t, stop),
            None => true,
        }
    }

    fn finish_tail(&mut self, mut t: Tail, stop: &Stop) -> bool {
        METRICS.file_event("finished");
        log::debug!("{}: finished {}", self.name, t.path.display());
        let mut chunk = self.ring.chunk(t.labels.clone());
        t.set_advance(&mut chunk, AdvanceKind::Done);
        self.send(chunk, stop)
    }

    /// Chooses the files to read this turn, opening those that need it.
    fn pick(&mut self, now: Instant, picked: &mut Vec<usize>) {
        picked.clear();
        let n = self.files.len();
        if n == 0 {
            return;
        }
        let start = self.cursor % n;
        for step in 0..n {
            if picked.len() == BATCH {
                break;
            }
            let fi = (start + step) % n;
            let t = &self.files[fi];
            if t.next_check > now {
                continue;
            }
            if t.file.is_none() {
                let wants = t.size_seen() > t.read_offset || t.life == Life::Draining || t.woken;
                if !wants || !self.open_file(fi, picked) {
                    self.files[fi].next_check = now + MAX_IDLE;
                    continue;
                }
            }
            picked.push(fi);
        }
        self.cursor = (start + picked.len().max(1)) % n;
    }

    /// Opens a file by its path, checking it is still the same identity. Closes the least
    /// recently read idle file first if the cap is reached.
    fn open_file(&mut self, fi: usize, picked: &[usize]) -> bool {
        if self.files[fi].life == Life::Draining {
            // Gone while closed: `to_finish` has it.
            return false;
        }
        if self.open >= self.max_open && !self.close_lru(fi, picked) {
            return false;
        }
        let t = &mut self.files[fi];
        let file = match File::open(&*t.path) {
            Ok(f) => f,
            Err(e) => {
                log::debug!("{}: cannot open {}: {e}", self.name, t.path.display());
                return false;
            }
        };
        match file.metadata() {
            Ok(m) if m.dev() == t.key.dev && m.ino() == t.key.ino => {
                t.file = Some(file);
                self.open += 1;
                METRICS.files_open.inc();
                true
            }
            // The path names another file now; discovery will report where ours went.
            _ => false,
        }
    }

    /// Closes the least recently read idle file, never `except` or one picked for this turn.
    fn close_lru(&mut self, except: usize, picked: &[usize]) -> bool {
        let victim = self
            .files
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                *i != except
                    && !picked.contains(i)
                    // RKE2's two files are rotated by lumberjack, which compresses the backup at
                    // once: closed, a rotated one could not be reopened to drain it.
                    && t.format == Format::Cri
                    && t.file.is_some()
                    && t.life == Life::Live
                    && t.idle_rounds > 0
            })
            .min_by_key(|(_, t)| t.last_read)
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                self.files[i].file = None;
                self.open -= 1;
                METRICS.files_open.dec();
                METRICS.file_event("closed_lru");
                true
            }
            None => false,
        }
    }

    fn control(&mut self, msg: Control) {
        match msg {
            Control::Add(tail) => {
                if self.index.contains_key(&tail.key) {
                    // The inode was freed and reused by a new file before the old one was
                    // finished: let the old one go, and follow the new one.
                    if let Some(old) = self.remove(tail.key) {
                        self.retired.push(old);
                    }
                }
                self.index.insert(tail.key, self.files.len());
                self.to_register.push(tail.key);
                self.files.push(*tail);
            }
            Control::Moved { key, path } => {
                if let Some(&i) = self.index.get(&key) {
                    log::debug!(
                        "{}: {} renamed to {}",
                        self.name,
                        self.files[i].path.display(),
                        path.display()
                    );
                    self.files[i].path = path;
                }
            }
            Control::Wake { key } => {
                if let Some(&i) = self.index.get(&key) {
                    let t = &mut self.files[i];
                    t.woken = true;
                    t.next_check = t.next_check.min(Instant::now());
                }
            }
            Control::Relabel { key, labels } => {
                if let Some(&i) = self.index.get(&key) {
                    self.files[i].labels = labels;
                }
            }
            Control::Gone { key } => {
                if let Some(&i) = self.index.get(&key) {
                    let t = &mut self.files[i];
                    t.life = Life::Draining;
                    t.next_check = Instant::now();
                    if t.file.is_none() {
                        let lost = t.size_seen().saturating_sub(t.read_offset);
                        if lost > 0 {
                            METRICS.lost("deleted_unread", lost);
                            log::warn!(
                                "{}: {} was removed before it could be read to its end ({lost} bytes); \
                                 raise tail.max_open_files if this repeats",
                                self.name,
                                t.path.display()
                            );
                        }
                        self.to_finish.push(key);
                    }
                }
            }
        }
    }

    fn remove(&mut self, key: FileKey) -> Option<Tail> {
        let i = self.index.remove(&key)?;
        let t = self.files.swap_remove(i);
        if let Some(moved) = self.files.get(i) {
            self.index.insert(moved.key, i);
        }
        if t.file.is_some() {
            self.open -= 1;
            METRICS.files_open.dec();
        }
        Some(t)
    }
}
