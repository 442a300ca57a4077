//! The one writer: takes chunks off the ring, batches them, sends each batch to Loki (or
//! stdout), and applies the acked positions.
//!
//! A batch is cut when the next chunk would take it past `batch.max_bytes`, when it is
//! `batch.max_wait` old, or at once when every source is idle (a quiet node gets its lines with
//! low latency). While a batch is being retried nothing else is sent: per-stream order holds, the
//! ring fills, and the tailers pause. Positions move only after the answer.

pub mod encode;
pub mod loki;
pub mod proto;
pub mod retry;
pub mod stdout;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::config;
use crate::entry::Chunk;
use crate::positions::Positions;
use crate::ring::RingRx;
use crate::shutdown::Stop;
use crate::telemetry::metrics::{with_reason, writer_labels, METRICS};
use loki::{LokiClient, Outcome};
use retry::Backoff;

/// Where batches go.
pub enum Output {
    Loki(LokiClient),
    Stdout,
}

/// What the health endpoint reads: when the writer last made progress, and whether it holds data.
#[derive(Default)]
pub struct Progress {
    /// Unix seconds of the last batch acked (or of start).
    pub last_ack: AtomicU64,
    /// Unix seconds since which a batch has been waiting to be sent; 0 when none.
    pub pending_since: AtomicU64,
}

pub struct Writer {
    rx: RingRx,
    output: Output,
    positions: Positions,
    cfg: config::Loki,
    batch: Vec<Chunk>,
    batch_bytes: usize,
    batch_started: Instant,
    encoder: encode::Encoder,
    encoded: Vec<u8>,
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
    progress: Arc<Progress>,
    metric_labels: Vec<(&'static str, String)>,
}

impl Writer {
    pub fn new(
        rx: RingRx,
        output: Output,
        positions: Positions,
        cfg: config::Loki,
        progress: Arc<Progress>,
    ) -> Writer {
        let (host, tenant) = match &output {
            Output::Loki(c) => (c.host.clone(), c.tenant().to_string()),
            Output::Stdout => ("stdout".to_string(), String::new()),
        };
        METRICS.init_writer(&host, &tenant);
        progress
            .last_ack
            .store(crate::positions::store::unix_now(), Ordering::Relaxed);
        Writer {
            rx,
            output,
            positions,
            cfg,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_started: Instant::now(),
            encoder: encode::Encoder::default(),
            encoded: Vec::new(),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
            progress,
            metric_labels: writer_labels(&host, &tenant),
        }
    }

    /// Runs until every source has hung up (or the stop deadline passes), then commits positions.
    pub fn run(mut self, stop: &Stop) {
        let max_bytes = self.cfg.batch.max_bytes.0 as usize;
        let max_wait = self.cfg.batch.max_wait.0;
        loop {
            let wait = if self.batch.is_empty() {
                Duration::from_millis(100)
            } else {
                max_wait
                    .saturating_sub(self.batch_started.elapsed())
                    .max(Duration::from_millis(1))
                    .min(Duration::from_millis(20))
            };
            match self.rx.recv_timeout(wait) {
                Ok(chunk) => {
                    METRICS
                        .process_duration
                        .observe(chunk.read_at.elapsed().as_secs_f64());
                    if !self.batch.is_empty() && self.batch_bytes + chunk.size() > max_bytes {
                        self.flush(stop);
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
                && (self.batch_started.elapsed() >= max_wait || self.rx.sources_idle())
            {
                self.flush(stop);
            }
            self.positions.maybe_save();
            if stop.past_deadline() {
                break;
            }
        }
        if !stop.past_deadline() {
            self.flush(stop);
        }
        self.positions.save();
    }

    /// Sends the batch until it is stored or dropped on purpose, then commits its positions.
    /// Returns without committing if the stop deadline passes first.
    fn flush(&mut self, stop: &Stop) {
        if self.batch.is_empty() {
            return;
        }
        let entries: u64 = self.batch.iter().map(|c| c.entries.len() as u64).sum();
        let delivered = if entries == 0 {
            true
        } else {
            self.progress
                .pending_since
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
            let ok = match &self.output {
                Output::Stdout => self.write_stdout(stop),
                Output::Loki(_) => self.send_loki(entries, stop),
            };
            self.progress.pending_since.store(0, Ordering::Relaxed);
            ok
        };
        if delivered {
            for chunk in self.batch.drain(..) {
                if let Some(a) = &chunk.advance {
                    self.positions.apply(a);
                }
                self.rx.recycle(chunk);
            }
            self.progress
                .last_ack
                .store(crate::positions::store::unix_now(), Ordering::Relaxed);
        } else {
            // Stopping with the batch unsent: its positions stay where they were, and these
            // lines are read again after the restart.
            self.batch.clear();
        }
        self.batch_bytes = 0;
    }

    fn write_stdout(&mut self, stop: &Stop) -> bool {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
        match stdout::write_chunks(&self.batch, &mut out) {
            Ok(()) => true,
            Err(e) => {
                log::error!("cannot write to stdout: {e}; stopping (positions of unwritten lines are not committed)");
                stop.begin(Duration::ZERO);
                false
            }
        }
    }

    fn send_loki(&mut self, entries: u64, stop: &Stop) -> bool {
        let Output::Loki(client) = &self.output else {
            return false;
        };
        self.encoder.encode(&self.batch, &mut self.encoded);
        self.compressed
            .resize(snap::raw::max_compress_len(self.encoded.len()), 0);
        let n = match self.snappy.compress(&self.encoded, &mut self.compressed) {
            Ok(n) => n,
            Err(e) => {
                log::error!(
                    "snappy compression failed: {e}; dropping a batch of {entries} entries"
                );
                self.count_drop("ingester_error", entries, self.encoded.len() as u64);
                return true;
            }
        };
        let body = &self.compressed[..n];
        let mut backoff = Backoff::new(self.cfg.retry.min_backoff.0, self.cfg.retry.max_backoff.0);
        loop {
            let limit = stop.remaining().map(|r| r.max(Duration::from_millis(100)));
            match client.push(body, limit) {
                Outcome::Stored => {
                    METRICS
                        .sent_bytes
                        .get_or_create(&self.metric_labels)
                        .inc_by(n as u64);
                    METRICS
                        .sent_entries
                        .get_or_create(&self.metric_labels)
                        .inc_by(entries);
                    return true;
                }
                Outcome::Reject { status, reason } => {
                    log::error!(
                        "Loki rejected a batch of {entries} entries with {status}: {reason}; \
                         dropped (counted in loki_write_dropped_entries_total{{reason=\"ingester_error\"}})"
                    );
                    self.count_drop("ingester_error", entries, n as u64);
                    return true;
                }
                Outcome::Retry { status, reason } => {
                    let max = self.cfg.retry.max_retries;
                    if max > 0 && backoff.retries + 1 >= max {
                        let why = if status == 429 {
                            "rate_limited"
                        } else {
                            "ingester_error"
                        };
                        log::error!(
                            "giving up on a batch of {entries} entries after {max} attempts \
                             (last: {status} {reason}); dropped, reason {why}. Set \
                             loki.retry.max_retries: 0 to retry until Loki takes it"
                        );
                        self.count_drop(why, entries, n as u64);
                        return true;
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
                        return false;
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
