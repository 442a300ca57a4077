//! The writer: takes chunks off the ring, batches them, and sends each batch to Loki (or
//! stdout); only then are their positions applied.
//!
//! The batcher cuts a batch when the next chunk would take it past `batch.max_bytes`, when it
//! is `batch.max_wait` old, or at once when every source is idle (a quiet node gets its lines
//! with low latency), and numbers it. Sealers, as many as tailer threads, encode and compress
//! batches side by side: snappy is the largest cost of the whole pipeline (see BENCHMARKS.md),
//! and one thread doing it capped throughput below what the tailers read. The sender puts the
//! sealed batches back in their order, pushes each, retrying as long as it takes, and applies
//! its positions. So batches are compressed while the last one is on the wire, and still only
//! one request is in flight, in the order batches were cut: per-stream order holds. While the
//! sender retries, the sealers' hand-offs fill, the batcher stops taking from the ring, the ring
//! fills, and the tailers pause.

pub mod encode;
pub mod loki;
pub mod proto;
pub mod retry;
pub mod stdout;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config;
use crate::entry::Chunk;
use crate::positions::Positions;
use crate::ring::{Recycler, RingRx};
use crate::shutdown::Stop;
use crate::telemetry::metrics::{with_reason, writer_labels, METRICS};
use crate::telemetry::tap::{Filter, TAP};
use loki::{LokiClient, Outcome};
use retry::Backoff;

/// Where batches go.
pub enum Output {
    Loki(LokiClient),
    Stdout,
    /// `ringtail tap --config`: the entries a filter accepts go to stdout; nothing is shipped.
    Tap(Filter),
}

/// What the health endpoint reads: when the writer last made progress, and whether it holds data.
#[derive(Default)]
pub struct Progress {
    /// Unix seconds of the last batch acked (or of start).
    pub last_ack: AtomicU64,
    /// Unix seconds of the last push attempt that finished, whatever its answer.
    pub last_attempt: AtomicU64,
    /// Unix seconds since which a batch has been waiting to be sent; 0 when none.
    pub pending_since: AtomicU64,
}

/// A batch as the batcher cut it; `seq` numbers batches from 0 in the order they were cut.
struct Cut {
    seq: u64,
    chunks: Vec<Chunk>,
    entries: u64,
}

/// A batch ready to send: its chunks (for the positions and the stdout sink) and, for Loki, the
/// compressed `PushRequest` in `body[..len]` (the buffer is reused and kept at its largest size,
/// so it is not zero-filled again for every batch).
struct Sealed {
    seq: u64,
    chunks: Vec<Chunk>,
    body: Vec<u8>,
    len: usize,
    entries: u64,
}

/// Hands `item` to `tx`, waiting while it is full; gives it back if the stop deadline passes or
/// the other side is gone first.
fn hand_off<T>(tx: &Sender<T>, mut item: T, stop: &Stop) -> Result<(), T> {
    loop {
        match tx.send_timeout(item, Duration::from_millis(50)) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::SendTimeoutError::Timeout(i)) => {
                if stop.past_deadline() {
                    return Err(i);
                }
                item = i;
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(i)) => return Err(i),
        }
    }
}

/// Stopping with a batch unsent: its positions stay where they were, and its lines are read
/// again after the restart.
fn drop_unsent(recycler: &Recycler, chunks: Vec<Chunk>) {
    for c in chunks {
        recycler.recycle(c);
    }
}

/// Starts the batcher, `sealers` sealers and the sender; they end when every source has hung
/// up (or the stop deadline passes), the sender after committing positions.
pub fn start(
    rx: RingRx,
    output: Output,
    positions: Positions,
    cfg: config::Loki,
    sealers: usize,
    progress: Arc<Progress>,
    stop: Arc<Stop>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (host, tenant) = match &output {
        Output::Loki(c) => (c.host.clone(), c.tenant().to_string()),
        Output::Stdout | Output::Tap(_) => ("stdout".to_string(), String::new()),
    };
    METRICS.init_writer(&host, &tenant);
    progress
        .last_ack
        .store(crate::positions::store::unix_now(), Ordering::Relaxed);
    let sealers = sealers.max(1);
    let (cut_tx, cut_rx) = crossbeam_channel::bounded(1);
    // One slot is enough: the sender drains it into `waiting` while it looks for the next
    // batch, so a sealer ahead of its turn never blocks the one that is due.
    let (sealed_tx, sealed_rx) = crossbeam_channel::bounded(1);
    let (bodies_tx, bodies_rx) = crossbeam_channel::bounded(sealers + 2);
    let recycler = rx.recycler();
    let batcher = Batcher {
        recycler: recycler.clone(),
        rx,
        cuts: cut_tx,
        next_seq: 0,
        max_bytes: cfg.batch.max_bytes.0 as usize,
        max_wait: cfg.batch.max_wait.0,
        batch: Vec::new(),
        batch_bytes: 0,
        batch_started: Instant::now(),
    };
    let compress = matches!(output, Output::Loki(_));
    let sender = SenderLoop {
        sealed: sealed_rx,
        waiting: BTreeMap::new(),
        next_seq: 0,
        bodies: bodies_tx,
        recycler: recycler.clone(),
        output,
        positions,
        retry: cfg.retry,
        progress,
        metric_labels: writer_labels(&host, &tenant),
        split: encode::Encoder::default(),
    };
    let mut threads = Vec::with_capacity(sealers + 2);
    let s = stop.clone();
    threads.push(
        std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || batcher.run(&s))?,
    );
    for i in 0..sealers {
        let sealer = Sealer {
            cuts: cut_rx.clone(),
            sealed: sealed_tx.clone(),
            bodies: bodies_rx.clone(),
            recycler: recycler.clone(),
            compress,
            encoder: encode::Encoder::default(),
            encoded: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        };
        let s = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("sealer-{i}"))
                .spawn(move || sealer.run(&s))?,
        );
    }
    drop((cut_rx, sealed_tx));
    threads.push(
        std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || sender.run(&stop))?,
    );
    Ok(threads)
}

struct Batcher {
    rx: RingRx,
    recycler: Recycler,
    cuts: Sender<Cut>,
    next_seq: u64,
    max_bytes: usize,
    max_wait: Duration,
    batch: Vec<Chunk>,
    batch_bytes: usize,
    batch_started: Instant,
}

impl Batcher {
    fn run(mut self, stop: &Stop) {
        loop {
            let wait = if self.batch.is_empty() {
                Duration::from_millis(100)
            } else {
                self.max_wait
                    .saturating_sub(self.batch_started.elapsed())
                    .clamp(Duration::from_millis(1), Duration::from_millis(20))
            };
            match self.rx.recv_timeout(wait) {
                Ok(chunk) => {
                    METRICS
                        .process_duration
                        .observe(chunk.read_at.elapsed().as_secs_f64());
                    TAP.publish(&chunk);
                    if !self.batch.is_empty() && self.batch_bytes + chunk.size() > self.max_bytes {
                        self.cut(stop);
                    }
                    if self.batch.is_empty() {
                        self.batch_started = Instant::now();
                    }
                    self.batch_bytes += chunk.size();
                    self.batch.push(chunk);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !self.batch.is_empty()
                && (self.batch_started.elapsed() >= self.max_wait || self.rx.sources_idle())
            {
                self.cut(stop);
            }
            if stop.past_deadline() {
                return;
            }
        }
        self.cut(stop);
    }

    /// Hands the batch to a sealer (blocking while every sealer is busy and one batch waits).
    fn cut(&mut self, stop: &Stop) {
        if self.batch.is_empty() {
            return;
        }
        let chunks = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let entries = chunks.iter().map(|c| c.entries.len() as u64).sum();
        let cut = Cut {
            seq: self.next_seq,
            chunks,
            entries,
        };
        self.next_seq += 1;
        if let Err(c) = hand_off(&self.cuts, cut, stop) {
            drop_unsent(&self.recycler, c.chunks);
        }
    }
}

/// Encodes and compresses batches, each with its own reused buffers.
struct Sealer {
    cuts: Receiver<Cut>,
    sealed: Sender<Sealed>,
    bodies: Receiver<Vec<u8>>,
    recycler: Recycler,
    compress: bool,
    encoder: encode::Encoder,
    encoded: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl Sealer {
    fn run(mut self, stop: &Stop) {
        loop {
            match self.cuts.recv_timeout(Duration::from_millis(100)) {
                Ok(cut) => {
                    let sealed = self.seal(cut);
                    if let Err(s) = hand_off(&self.sealed, sealed, stop) {
                        drop_unsent(&self.recycler, s.chunks);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if stop.past_deadline() {
                return;
            }
        }
    }

    fn seal(&mut self, cut: Cut) -> Sealed {
        let mut body = self.bodies.try_recv().unwrap_or_default();
        let mut len = 0;
        if self.compress && cut.entries > 0 {
            self.encoder.encode(&cut.chunks, &mut self.encoded);
            let need = snap::raw::max_compress_len(self.encoded.len());
            if body.len() < need {
                body.resize(need, 0);
            }
            len = match self.snappy.compress(&self.encoded, &mut body) {
                Ok(n) => n,
                Err(e) => {
                    // Cannot happen for in-memory input of this size; do not lose the batch
                    // silently if it does.
                    log::error!("snappy compression failed: {e}; the batch is sent uncompressed and Loki will reject it");
                    body.clear();
                    body.extend_from_slice(&self.encoded);
                    body.len()
                }
            };
        }
        Sealed {
            seq: cut.seq,
            chunks: cut.chunks,
            body,
            len,
            entries: cut.entries,
        }
    }
}

/// How a push ended.
enum Sent {
    /// Stored, or dropped on purpose (and counted): its positions may be committed.
    Done,
    /// 413: the body is over a size limit on the way (Loki's `max_recv_msg_size`, or a proxy's,
    /// such as nginx's 1 MiB default): the caller splits the batch.
    TooLarge,
    /// The stop deadline passed first: nothing is committed.
    Stopped,
}

struct SenderLoop {
    sealed: Receiver<Sealed>,
    /// Sealed ahead of their turn (another sealer was slower with an earlier batch).
    waiting: BTreeMap<u64, Sealed>,
    /// The batch to push next.
    next_seq: u64,
    bodies: Sender<Vec<u8>>,
    recycler: Recycler,
    output: Output,
    positions: Positions,
    retry: config::Retry,
    progress: Arc<Progress>,
    metric_labels: Vec<(&'static str, String)>,
    /// For re-encoding halves of a batch a size limit refused (413); rarely used.
    split: encode::Encoder,
}

impl SenderLoop {
    fn run(mut self, stop: &Stop) {
        'run: loop {
            match self.sealed.recv_timeout(Duration::from_millis(100)) {
                Ok(batch) => {
                    self.waiting.insert(batch.seq, batch);
                    while let Some(batch) = self.waiting.remove(&self.next_seq) {
                        self.next_seq += 1;
                        self.deliver(batch, stop);
                        self.positions.maybe_save();
                        if stop.past_deadline() {
                            break 'run;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.positions.maybe_save();
            if stop.past_deadline() {
                break;
            }
        }
        // Batches after one that was never sealed (the deadline passed): pushing them would
        // commit positions past lines that were not sent.
        for (_, batch) in std::mem::take(&mut self.waiting) {
            drop_unsent(&self.recycler, batch.chunks);
        }
        self.positions.save();
    }

    /// Sends one batch until it is stored or dropped on purpose, then commits its positions.
    /// Gives up without committing if the stop deadline passes first.
    fn deliver(&mut self, batch: Sealed, stop: &Stop) {
        let delivered = if batch.entries == 0 {
            true
        } else {
            self.progress
                .pending_since
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
            let ok = match &self.output {
                Output::Stdout => write_stdout(&batch.chunks, None, stop),
                Output::Tap(f) => write_stdout(&batch.chunks, Some(f), stop),
                Output::Loki(_) => {
                    match self.send_loki(&batch.body[..batch.len], batch.entries, stop) {
                        Sent::Done => true,
                        Sent::Stopped => false,
                        Sent::TooLarge => self.send_split(&batch.chunks, stop),
                    }
                }
            };
            self.progress.pending_since.store(0, Ordering::Relaxed);
            ok
        };
        for chunk in batch.chunks {
            if delivered {
                if let Some(a) = &chunk.advance {
                    self.positions.apply(a);
                }
            }
            self.recycler.recycle(chunk);
        }
        if delivered {
            self.progress
                .last_ack
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
        }
        let _ = self.bodies.try_send(batch.body);
    }

    /// A batch some size limit refused (413), sent again in halves, each half split again while
    /// it is refused; one chunk (one read of one file) still refused is dropped and counted.
    /// True once every part is stored or dropped; false when ringtail stops first.
    fn send_split(&mut self, chunks: &[Chunk], stop: &Stop) -> bool {
        let entries: u64 = chunks.iter().map(|c| c.entries.len() as u64).sum();
        if chunks.len() < 2 {
            log::error!(
                "a push of {entries} entries from one read is still over the size limit of Loki \
                 or of a proxy in front of it (413); dropped. Raise that limit (nginx: \
                 client_max_body_size) above loki.batch.max_bytes"
            );
            let bytes = chunks.iter().map(|c| c.size() as u64).sum();
            self.count_drop("ingester_error", entries, bytes);
            return true;
        }
        let (a, b) = chunks.split_at(chunks.len() / 2);
        log::warn!(
            "Loki or a proxy refused a push as too large (413); sending it again in two halves. \
             Lower loki.batch.max_bytes below that limit"
        );
        for half in [a, b] {
            let mut encoded = Vec::new();
            self.split.encode(half, &mut encoded);
            let body = match snap::raw::Encoder::new().compress_vec(&encoded) {
                Ok(b) => b,
                Err(e) => {
                    log::error!("snappy compression failed: {e}; the part is dropped");
                    continue;
                }
            };
            let n: u64 = half.iter().map(|c| c.entries.len() as u64).sum();
            let done = match self.send_loki(&body, n, stop) {
                Sent::Done => true,
                Sent::Stopped => false,
                Sent::TooLarge => self.send_split(half, stop),
            };
            if !done {
                return false;
            }
        }
        true
    }

    fn send_loki(&mut self, body: &[u8], entries: u64, stop: &Stop) -> Sent {
        let Output::Loki(client) = &self.output else {
            return Sent::Stopped;
        };
        let n = body.len() as u64;
        let mut backoff = Backoff::new(self.retry.min_backoff.0, self.retry.max_backoff.0);
        loop {
            let limit = stop.remaining().map(|r| r.max(Duration::from_millis(100)));
            let outcome = client.push(body, limit);
            self.progress
                .last_attempt
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
            match outcome {
                Outcome::Stored => {
                    METRICS
                        .sent_bytes
                        .get_or_create(&self.metric_labels)
                        .inc_by(n);
                    METRICS
                        .sent_entries
                        .get_or_create(&self.metric_labels)
                        .inc_by(entries);
                    return Sent::Done;
                }
                Outcome::Reject { status: 413, .. } => return Sent::TooLarge,
                Outcome::Reject { status, reason } => {
                    let why = reject_reason(&reason);
                    log::error!(
                        "Loki rejected a batch of {entries} entries with {status}: {reason}; \
                         dropped (counted in loki_write_dropped_entries_total{{reason=\"{why}\"}}; \
                         a 400 may have stored the valid entries: Loki rejects the invalid ones \
                         and keeps the rest)"
                    );
                    self.count_drop(why, entries, n);
                    return Sent::Done;
                }
                Outcome::Retry { status, reason } => {
                    let max = self.retry.max_retries;
                    if max > 0 && backoff.retries + 1 >= max {
                        let why = match status {
                            429 if is_stream_limit(&reason) => "stream_limited",
                            429 => "rate_limited",
                            _ => "ingester_error",
                        };
                        log::error!(
                            "giving up on a batch of {entries} entries after {max} attempts \
                             (last: {status} {reason}); dropped, reason {why}. Set \
                             loki.retry.max_retries: 0 to retry until Loki takes it"
                        );
                        self.count_drop(why, entries, n);
                        return Sent::Done;
                    }
                    METRICS
                        .batch_retries
                        .get_or_create(&self.metric_labels)
                        .inc();
                    let wait = backoff.next_wait();
                    log::warn!(
                        "push to Loki failed ({status} {reason}); retry {} in {:.1}s",
                        backoff.retries,
                        wait.as_secs_f64()
                    );
                    stop.sleep(wait);
                    if stop.past_deadline() {
                        return Sent::Stopped;
                    }
                }
            }
        }
    }

    fn count_drop(&self, reason: &str, entries: u64, bytes: u64) {
        let l = with_reason(&self.metric_labels, reason);
        METRICS.dropped_entries.get_or_create(&l).inc_by(entries);
        METRICS.dropped_bytes.get_or_create(&l).inc_by(bytes);
    }
}

/// The drop reason of a non-retryable answer, from Loki's message (Alloy's reason values).
fn reject_reason(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("line_too_long") || m.contains("max entry size") {
        "line_too_long"
    } else {
        "ingester_error"
    }
}

/// Loki's 429 for too many active streams, as opposed to its rate limits.
fn is_stream_limit(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("stream limit") || m.contains("stream_limit")
}

fn write_stdout(chunks: &[Chunk], filter: Option<&Filter>, stop: &Stop) -> bool {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
    match stdout::write_chunks(chunks, filter, &mut out) {
        Ok(()) => true,
        Err(e) => {
            log::error!(
                "cannot write to stdout: {e}; stopping (positions of unwritten lines are not committed)"
            );
            stop.begin(Duration::ZERO);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loki_messages_give_alloy_reasons() {
        // Loki's validation message for an over-long line, and the reason's own name.
        assert_eq!(
            reject_reason(
                "Max entry size '262144' bytes exceeded for stream '{a=\"b\"}' while adding an \
                 entry with length '300000' bytes"
            ),
            "line_too_long"
        );
        assert_eq!(
            reject_reason("... reason: line_too_long ..."),
            "line_too_long"
        );
        assert_eq!(
            reject_reason("entry for stream '{a=\"b\"}' has timestamp too old"),
            "ingester_error"
        );
        assert!(is_stream_limit(
            "Maximum active stream limit exceeded, reduce the number of active streams (stream limit: 5000)"
        ));
        assert!(!is_stream_limit(
            "Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec)"
        ));
    }
}
