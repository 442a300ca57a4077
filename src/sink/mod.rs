//! The writer: takes chunks off the ring, batches them, and sends each batch to Loki (or
//! stdout); only then are their positions applied.
//!
//! Lanes. Streams are spread over `loki.max_in_flight` lanes, as Alloy's and Prometheus'
//! remote-write shards spread series: a chunk's lane is a hash of its container's directory
//! (pod and RKE2 files: every file of one stream, rotated ones too, and a file whose labels
//! change, stay in one lane) or of its source (the journal, Events: one lane each, since one of
//! their chunks holds many streams and one position). Each lane has its own open batch and
//! pushes its batches one at a time, in the order they were cut. So the entries of a stream
//! reach Loki in order (a Loki with `unordered_writes: false` takes every line), and a file's
//! positions are acked in order; up to `max_in_flight` pushes overlap across lanes, as many as
//! `sink::concurrency` allows.
//!
//! The batcher cuts a lane's batch when the next chunk would take it past `batch.max_bytes`,
//! when it is `batch.max_wait` old, or when every source is idle and the oldest open batch has
//! waited [`IDLE_LINGER`] (a quiet node gets its lines with low latency, and lines that trickle
//! in from many files within that window share one push), and numbers it.
//!
//! Trickles. When it cuts because the sources are idle, the batcher merges the open batches of
//! every lane that has nothing cut and unacked (`Lanes::outstanding`) into one batch, up to
//! `batch.max_bytes`: twenty files writing a line each within the linger are one push, not
//! twenty. A merged batch is pushed by one lane's pusher (its queue), and until it is acked
//! every later batch of the lanes it carries goes to that same queue (`Lanes::route`), so each
//! file's batches still reach Loki, and are acked, in the order they were cut. Only lanes with
//! nothing outstanding are merged, so a merge never waits behind another lane's push. The open batches of all lanes together hold at most
//! half the lanes' worth of `batch.max_bytes` in memory (chunk capacities, not only line
//! bytes); past that the largest is cut early, so memory does not grow with the lane count. Sealers, as many as tailer threads, encode and
//! compress batches side by side: snappy is the largest cost of the whole pipeline (see
//! BENCHMARKS.md). For Loki they then give the chunks back to the tailers and keep only the
//! compressed body and the positions, so what is in flight costs its compressed size. The
//! sender puts sealed batches back in their order, hands each to its lane's pusher thread, and
//! applies the positions of every batch acked, which continue their files' positions since a
//! file stays in one lane. A batch that keeps failing holds back its lane's files and nothing
//! else; a crash re-sends at most the batches in flight. Sealed batches not yet acked are
//! bounded (`max_in_flight` plus one per sealer): past that, the sender stops taking from the sealers, the
//! batcher stops taking from the ring, the ring fills, and the tailers pause.

pub mod concurrency;
pub mod encode;
pub mod loki;
pub mod proto;
pub mod retry;
pub mod stdout;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config;
use crate::entry::{Advance, Chunk, Fingerprint};
use crate::positions::Positions;
use crate::ring::{Recycler, RingRx};
use crate::shutdown::Stop;
use crate::telemetry::metrics::{with_reason, writer_labels, METRICS};
use crate::telemetry::tap::{Filter, TAP};
use concurrency::{Answer, Limiter};
use loki::{LokiClient, Outcome};

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

/// How long the batcher lets an open batch wait for more lines once every source is idle.
/// Discovery already gathers inotify events for 50 ms and wakes the files of one window
/// together, so their lines reach the batcher close in time: this only has to let the last
/// tailer's chunk arrive. Gathering there rather than lingering here halves the wakeups of a
/// trickle (every stage acts once per window, not once per line). Against the latency target:
/// a new file's first line acked within 100 ms (the bench: p99 76 ms; with 20 ms + 50 ms the
/// other way round, 86 ms and 23 % more CPU in the trickle).
pub const IDLE_LINGER: Duration = Duration::from_millis(20);

/// A batch as the batcher cut it; `seq` numbers batches from 0 in the order they were cut.
/// `queue` is the lane whose pusher sends it; `lanes` are the lanes whose chunks it holds
/// (one, or several for a merged batch).
struct Cut {
    seq: u64,
    queue: usize,
    lanes: Vec<usize>,
    chunks: Vec<Chunk>,
    entries: u64,
}

/// What the batcher and the sender share about the lanes: how many batches of each lane are
/// cut and not yet acked (or dropped). The batcher only raises a count, the sender only lowers
/// it, so a lane the batcher sees at 0 has nothing anywhere in the pipeline.
struct Lanes {
    outstanding: Vec<AtomicUsize>,
}

impl Lanes {
    fn new(n: usize) -> Arc<Lanes> {
        Arc::new(Lanes {
            outstanding: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    fn idle(&self, lane: usize) -> bool {
        self.outstanding[lane].load(Ordering::Acquire) == 0
    }

    fn add(&self, lanes: &[usize]) {
        for &l in lanes {
            self.outstanding[l].fetch_add(1, Ordering::AcqRel);
        }
    }

    fn done(&self, lanes: &[usize]) {
        for &l in lanes {
            self.outstanding[l].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A batch ready to send: its positions, the compressed `PushRequest` in `body` for Loki (the
/// buffer is reused), and for stdout its chunks (for Loki they are recycled once sealed).
struct Sealed {
    seq: u64,
    queue: usize,
    lanes: Vec<usize>,
    chunks: Vec<Chunk>,
    advances: Vec<Advance>,
    body: Vec<u8>,
    entries: u64,
}

/// A lane's answer for one batch: stored or dropped on purpose (its positions may be applied),
/// or not (ringtail stopped first).
struct Acked {
    batch: Sealed,
    delivered: bool,
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

/// The lane of a chunk (see the module doc): its file's directory, else its source.
fn lane_of(chunk: &Chunk, lanes: usize) -> usize {
    match &chunk.advance {
        Some(Advance::File(f)) => lane_of_file(&f.path, lanes),
        Some(a) => lane_of_key(a.source().as_bytes(), lanes),
        None => lane_of_key(chunk.labels[0].rendered().as_bytes(), lanes),
    }
}

/// The lane of a log file: that of its directory (a container's, for pod logs), which its
/// rotated files share.
pub fn lane_of_file(path: &std::path::Path, lanes: usize) -> usize {
    lane_of_key(path.parent().unwrap_or(path).as_os_str().as_bytes(), lanes)
}

fn lane_of_key(key: &[u8], lanes: usize) -> usize {
    (Fingerprint::of(key).hash % lanes.max(1) as u64) as usize
}

/// Starts the batcher, `sealers` sealers, the sender and (for Loki) `loki.max_in_flight`
/// pushers; they end when every source has hung up (or the stop deadline passes), the sender
/// after committing positions.
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
    let lanes = match output {
        Output::Loki(_) => cfg.max_in_flight.max(1),
        Output::Stdout | Output::Tap(_) => 1,
    };
    let (cut_tx, cut_rx) = crossbeam_channel::bounded(1);
    // One slot is enough: the sender drains it into `waiting` while it looks for the next
    // batch, so a sealer ahead of its turn never blocks the one that is due.
    let (sealed_tx, sealed_rx) = crossbeam_channel::bounded(1);
    let outstanding_max = lanes + sealers;
    let (bodies_tx, bodies_rx) = crossbeam_channel::bounded(sealers + outstanding_max);
    let recycler = rx.recycler();
    let shared_lanes = Lanes::new(lanes);
    let batcher = Batcher {
        lanes: shared_lanes.clone(),
        route: (0..lanes).collect(),
        recycler: recycler.clone(),
        rx,
        cuts: cut_tx,
        next_seq: 0,
        max_bytes: cfg.batch.max_bytes.0 as usize,
        max_wait: cfg.batch.max_wait.0,
        open: (0..lanes).map(|_| Open::default()).collect(),
        open_bytes: 0,
        open_budget: (cfg.batch.max_bytes.0 as usize).saturating_mul(lanes.div_ceil(2)),
    };
    let compress = matches!(output, Output::Loki(_));
    let mut threads = Vec::with_capacity(sealers + lanes + 2);
    let metric_labels = writer_labels(&host, &tenant);
    let (acks_tx, acks_rx) = crossbeam_channel::unbounded();
    let mut lane_txs = Vec::new();
    let stdout = match output {
        Output::Loki(client) => {
            let pusher = Arc::new(Pusher {
                client,
                limiter: Limiter::new(
                    cfg.min_in_flight,
                    cfg.max_in_flight,
                    cfg.retry.min_backoff.0,
                    cfg.retry.max_backoff.0,
                ),
                max_retries: cfg.retry.max_retries,
                progress: progress.clone(),
                metric_labels: metric_labels.clone(),
            });
            for i in 0..lanes {
                let (tx, rx) = crossbeam_channel::unbounded();
                lane_txs.push(tx);
                let (p, acks, s) = (pusher.clone(), acks_tx.clone(), stop.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("push-{i}"))
                        .spawn(move || p.run_lane(&rx, &acks, &s))?,
                );
            }
            None
        }
        Output::Stdout => Some(None),
        Output::Tap(f) => Some(Some(f)),
    };
    drop(acks_tx);
    let sender = SenderLoop {
        sealed: sealed_rx,
        waiting: BTreeMap::new(),
        next_seq: 0,
        bodies: bodies_tx,
        spare_bodies: bodies_rx.clone(),
        recycler: recycler.clone(),
        stdout,
        lanes: lane_txs,
        shared_lanes,
        acks: acks_rx,
        outstanding: 0,
        outstanding_max,
        positions,
        progress,
    };
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
            compressed: Vec::new(),
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

/// A lane's batch being filled.
#[derive(Default)]
struct Open {
    chunks: Vec<Chunk>,
    /// Line bytes (`batch.max_bytes` counts these) and memory held (the budget counts this).
    bytes: usize,
    footprint: usize,
    started: Option<Instant>,
}

struct Batcher {
    rx: RingRx,
    lanes: Arc<Lanes>,
    /// The queue each lane's batches go to: its own, or while a merged batch that carries it
    /// is outstanding, that batch's.
    route: Vec<usize>,
    recycler: Recycler,
    cuts: Sender<Cut>,
    next_seq: u64,
    max_bytes: usize,
    max_wait: Duration,
    open: Vec<Open>,
    /// Memory held by all open batches, and its bound: past it, the largest is cut early.
    open_bytes: usize,
    open_budget: usize,
}

impl Batcher {
    fn run(mut self, stop: &Stop) {
        loop {
            let oldest = self.open.iter().filter_map(|o| o.started).min();
            // Nothing open: nothing to cut until a chunk comes (the sources hang up at stop).
            let wait = oldest.map_or(Duration::from_secs(1), |t| {
                self.max_wait
                    .saturating_sub(t.elapsed())
                    .clamp(Duration::from_millis(1), Duration::from_millis(20))
            });
            match self.rx.recv_timeout(wait) {
                Ok(chunk) => {
                    METRICS
                        .process_duration
                        .observe(chunk.read_at.elapsed().as_secs_f64());
                    TAP.publish(&chunk);
                    let lane = lane_of(&chunk, self.open.len());
                    let o = &self.open[lane];
                    if !o.chunks.is_empty() && o.bytes + chunk.size() > self.max_bytes {
                        self.cut(lane, stop);
                    }
                    if self.open_bytes + chunk.footprint() > self.open_budget {
                        let largest = (0..self.open.len()).max_by_key(|&l| self.open[l].footprint);
                        if let Some(l) = largest {
                            self.cut(l, stop);
                        }
                    }
                    let o = &mut self.open[lane];
                    o.started.get_or_insert_with(Instant::now);
                    o.bytes += chunk.size();
                    o.footprint += chunk.footprint();
                    self.open_bytes += chunk.footprint();
                    o.chunks.push(chunk);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let linger = IDLE_LINGER.min(self.max_wait);
            if oldest.is_some_and(|t| t.elapsed() >= linger) && self.rx.sources_idle() {
                self.cut_idle(stop);
            }
            for lane in 0..self.open.len() {
                if self.open[lane]
                    .started
                    .is_some_and(|t| t.elapsed() >= self.max_wait)
                {
                    self.cut(lane, stop);
                }
            }
            if stop.past_deadline() {
                return;
            }
        }
        for lane in 0..self.open.len() {
            self.cut(lane, stop);
        }
    }

    /// Hands a lane's batch to a sealer (blocking while every sealer is busy and one batch
    /// waits).
    fn cut(&mut self, lane: usize, stop: &Stop) {
        if self.open[lane].chunks.is_empty() {
            return;
        }
        if self.lanes.idle(lane) {
            self.route[lane] = lane;
        }
        self.send_cut(self.route[lane], vec![lane], stop);
    }

    /// Every source is idle: the open batches of lanes with nothing outstanding are merged into
    /// batches of up to `batch.max_bytes` (see the module doc), the others cut on their own.
    fn cut_idle(&mut self, stop: &Stop) {
        let mut group: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for lane in 0..self.open.len() {
            let (empty, open_bytes) = (self.open[lane].chunks.is_empty(), self.open[lane].bytes);
            if empty {
                continue;
            }
            if !self.lanes.idle(lane) {
                self.cut(lane, stop);
                continue;
            }
            if !group.is_empty() && bytes + open_bytes > self.max_bytes {
                self.cut_group(std::mem::take(&mut group), stop);
                bytes = 0;
            }
            bytes += open_bytes;
            group.push(lane);
        }
        if !group.is_empty() {
            self.cut_group(group, stop);
        }
    }

    /// One batch of several idle lanes' open batches, sent by the first lane's pusher.
    fn cut_group(&mut self, group: Vec<usize>, stop: &Stop) {
        let queue = group[0];
        for &l in &group {
            self.route[l] = queue;
        }
        self.send_cut(queue, group, stop);
    }

    /// Takes the open batches of `lanes` as one batch for `queue`, and hands it to a sealer
    /// (blocking while every sealer is busy and one batch waits).
    fn send_cut(&mut self, queue: usize, lanes: Vec<usize>, stop: &Stop) {
        let mut chunks = Vec::new();
        for &l in &lanes {
            let open = std::mem::take(&mut self.open[l]);
            self.open_bytes -= open.footprint;
            if chunks.is_empty() {
                chunks = open.chunks;
            } else {
                chunks.extend(open.chunks);
            }
        }
        let entries = chunks.iter().map(|c| c.entries.len() as u64).sum();
        self.lanes.add(&lanes);
        let cut = Cut {
            seq: self.next_seq,
            queue,
            lanes,
            chunks,
            entries,
        };
        self.next_seq += 1;
        if let Err(c) = hand_off(&self.cuts, cut, stop) {
            self.lanes.done(&c.lanes);
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
    /// snappy's output, at its worst-case size, reused.
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl Sealer {
    fn run(mut self, stop: &Stop) {
        loop {
            // The batcher hangs up when it ends (at stop, or at the deadline).
            let Ok(cut) = self.cuts.recv() else {
                return;
            };
            let sealed = self.seal(cut);
            if let Err(s) = hand_off(&self.sealed, sealed, stop) {
                drop_unsent(&self.recycler, s.chunks);
            }
            if stop.past_deadline() {
                return;
            }
        }
    }

    fn seal(&mut self, mut cut: Cut) -> Sealed {
        let mut body = self.bodies.try_recv().unwrap_or_default();
        body.clear();
        if self.compress && cut.entries > 0 {
            self.encoder.encode(&cut.chunks, &mut self.encoded);
            let need = snap::raw::max_compress_len(self.encoded.len());
            if self.compressed.len() < need {
                self.compressed.resize(need, 0);
            }
            match self.snappy.compress(&self.encoded, &mut self.compressed) {
                // Copied out at its size into a reused body: a body in flight costs what it
                // holds (a third to a half of snappy's worst case), and up to max_in_flight of
                // them wait for answers.
                Ok(n) => body.extend_from_slice(&self.compressed[..n]),
                Err(e) => {
                    // Cannot happen for in-memory input of this size; do not lose the batch
                    // silently if it does.
                    log::error!("snappy compression failed: {e}; the batch is sent uncompressed and Loki will reject it");
                    body.extend_from_slice(&self.encoded);
                }
            }
        }
        let advances = cut
            .chunks
            .iter_mut()
            .filter_map(|c| c.advance.take())
            .collect();
        if self.compress {
            drop_unsent(&self.recycler, std::mem::take(&mut cut.chunks));
        }
        Sealed {
            seq: cut.seq,
            queue: cut.queue,
            lanes: cut.lanes,
            chunks: cut.chunks,
            advances,
            body,
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

/// Puts sealed batches back in order, hands them to their lanes (or writes them to stdout), and
/// applies the positions of those acked.
struct SenderLoop {
    sealed: Receiver<Sealed>,
    /// Sealed ahead of their turn (another sealer was slower with an earlier batch).
    waiting: BTreeMap<u64, Sealed>,
    /// The batch to dispatch next.
    next_seq: u64,
    bodies: Sender<Vec<u8>>,
    /// The other end of `bodies`: emptied once the writer is idle (see `run`).
    spare_bodies: Receiver<Vec<u8>>,
    recycler: Recycler,
    /// `Some` for stdout (with the tap's filter, if any): batches are written here, in order.
    stdout: Option<Option<Filter>>,
    /// For Loki: each lane's pusher.
    lanes: Vec<Sender<Sealed>>,
    shared_lanes: Arc<Lanes>,
    acks: Receiver<Acked>,
    /// Batches handed to the lanes and not acked yet.
    outstanding: usize,
    outstanding_max: usize,
    positions: Positions,
    progress: Arc<Progress>,
}

impl SenderLoop {
    fn run(mut self, stop: &Stop) {
        let never = crossbeam_channel::never();
        let mut sealers_done = false;
        // The stdout sink has no pushers, so its acks channel is closed from the start: once
        // closed, it is not selected again (a closed channel is always ready, and selecting it
        // spun this loop at 100 % of a core).
        let mut pushers_gone = false;
        let acks_never = crossbeam_channel::never();
        loop {
            let sealed = if sealers_done || self.outstanding >= self.outstanding_max {
                &never
            } else {
                &self.sealed
            };
            let acks = if pushers_gone {
                &acks_never
            } else {
                &self.acks
            };
            crossbeam_channel::select! {
                recv(sealed) -> m => match m {
                    Ok(batch) => {
                        self.waiting.insert(batch.seq, batch);
                        while let Some(batch) = self.waiting.remove(&self.next_seq) {
                            self.next_seq += 1;
                            self.dispatch(batch, stop);
                            if stop.past_deadline() {
                                break;
                            }
                        }
                    }
                    Err(_) => sealers_done = true,
                },
                recv(acks) -> m => match m {
                    Ok(a) => self.acked(a),
                    Err(_) => pushers_gone = true,
                },
                // With nothing outstanding, every way to stop wakes the select (the sealers hang
                // up); with pushes out, the stop deadline is checked every 100 ms.
                default(if self.outstanding == 0 {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(100)
                }) => {
                    // Idle for a second: the bodies kept for reuse (up to one per batch in
                    // flight, each up to a compressed batch.max_bytes) go back to the
                    // allocator, so a node's quiet hours do not hold its last burst's memory.
                    if self.outstanding == 0 {
                        while self.spare_bodies.try_recv().is_ok() {}
                    }
                }
            }
            self.positions.maybe_save();
            if stop.past_deadline() || (sealers_done && self.outstanding == 0) {
                break;
            }
        }
        // Batches after one that was never sealed (the deadline passed): pushing them would
        // commit positions past lines that were not sent.
        for (_, batch) in std::mem::take(&mut self.waiting) {
            drop_unsent(&self.recycler, batch.chunks);
        }
        // The pushers end with their lanes; whatever they acked before that is committed.
        self.lanes.clear();
        while let Ok(a) = self.acks.try_recv() {
            self.acked(a);
        }
        self.positions.save();
    }

    fn dispatch(&mut self, batch: Sealed, stop: &Stop) {
        if self.outstanding == 0 {
            self.progress
                .pending_since
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
        }
        self.outstanding += 1;
        let Some(filter) = &self.stdout else {
            let queue = batch.queue;
            if let Err(e) = self.lanes[queue].send(batch) {
                self.acked(Acked {
                    batch: e.into_inner(),
                    delivered: false,
                });
            }
            return;
        };
        let delivered = batch.entries == 0 || write_stdout(&batch.chunks, filter.as_ref(), stop);
        self.acked(Acked { batch, delivered });
    }

    /// Applies an acked batch's positions (continuing its files', since a file stays in one
    /// lane) and recycles its buffers.
    fn acked(&mut self, a: Acked) {
        self.outstanding -= 1;
        let Acked { batch, delivered } = a;
        self.shared_lanes.done(&batch.lanes);
        if delivered {
            for adv in &batch.advances {
                self.positions.apply(adv);
            }
            self.progress
                .last_ack
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
        }
        drop_unsent(&self.recycler, batch.chunks);
        let _ = self.bodies.try_send(batch.body);
        let since = if self.outstanding == 0 {
            0
        } else {
            crate::positions::store::unix_now()
        };
        self.progress.pending_since.store(since, Ordering::Relaxed);
    }
}

/// What the lanes' pusher threads share: the client, the concurrency limit and the writer's
/// backoff.
struct Pusher {
    client: LokiClient,
    limiter: Limiter,
    max_retries: u32,
    progress: Arc<Progress>,
    metric_labels: Vec<(&'static str, String)>,
}

impl Pusher {
    /// One lane: its batches in order, one push at a time. Ends when the sender hangs up, or
    /// at the stop deadline (the rest of the lane is then read again after the restart).
    fn run_lane(&self, rx: &Receiver<Sealed>, acks: &Sender<Acked>, stop: &Stop) {
        loop {
            // The sender hangs up when it ends (at stop, or at the deadline).
            let Ok(batch) = rx.recv() else {
                return;
            };
            let delivered = batch.entries == 0
                || match self.push(&batch.body, batch.entries, stop) {
                    Sent::Done => true,
                    Sent::Stopped => false,
                    Sent::TooLarge => self.send_split(&batch.body, stop),
                };
            if acks.send(Acked { batch, delivered }).is_err() || !delivered {
                return;
            }
        }
    }

    /// A body some size limit refused (413), sent again in halves, each half split again while
    /// it is refused; a single entry still refused is dropped and counted. True once every part
    /// is stored or dropped; false when ringtail stops first.
    fn send_split(&self, body: &[u8], stop: &Stop) -> bool {
        let halves = match encode::split_in_two(body) {
            Ok(h) => h,
            Err(why) => {
                log::error!(
                    "a push of one entry is still over the size limit of Loki or of a proxy in \
                     front of it (413; {why}); dropped. Raise that limit (nginx: \
                     client_max_body_size) above loki.max_line_size"
                );
                self.count_drop("ingester_error", 1, body.len() as u64);
                return true;
            }
        };
        log::warn!(
            "Loki or a proxy refused a push as too large (413); sending it again in two halves. \
             Lower loki.batch.max_bytes below that limit"
        );
        for half in halves {
            let done = match self.push(&half.body, half.entries, stop) {
                Sent::Done => true,
                Sent::Stopped => false,
                Sent::TooLarge => self.send_split(&half.body, stop),
            };
            if !done {
                return false;
            }
        }
        true
    }

    /// Sends one body until it is stored or dropped on purpose, waiting for the concurrency
    /// limit and the writer's backoff before each attempt.
    fn push(&self, body: &[u8], entries: u64, stop: &Stop) -> Sent {
        let n = body.len() as u64;
        let mut attempts = 0u32;
        loop {
            let Some(permit) = self.limiter.acquire(stop) else {
                return Sent::Stopped;
            };
            let limit = stop.remaining().map(|r| r.max(Duration::from_millis(100)));
            let outcome = self.client.push(body, limit);
            attempts += 1;
            self.progress
                .last_attempt
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
            let answer = match &outcome {
                Outcome::Stored => Answer::Stored,
                Outcome::Retry { retry_after, .. } => Answer::Backpressure {
                    retry_after: *retry_after,
                },
                Outcome::Reject { .. } => Answer::Final,
            };
            let wait = self.limiter.release(permit, answer);
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
                Outcome::Retry { status, reason, .. } => {
                    let max = self.max_retries;
                    if max > 0 && attempts >= max {
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
                    log::warn!(
                        "push to Loki failed ({status} {reason}); retry {attempts} in {:.1}s \
                         (every lane waits)",
                        wait.unwrap_or_default().as_secs_f64()
                    );
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
