//! The hand-off from the tailers to the one writer: a bounded, lock-free ring of chunks
//! (crossbeam's array channel), and a pool that gives the writer's emptied chunks back to the
//! tailers so their buffers are reused.
//!
//! Bounded by design: when the writer cannot keep up (or Loki is down), `send` blocks, readers stop
//! reading, and the files on disk are the buffer. Memory stays at `capacity` chunks plus the
//! batch in flight. Time spent blocked is counted in `ringtail_ring_full_seconds`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};
use crossbeam_queue::ArrayQueue;

use crate::entry::{Chunk, LabelSet};
use crate::shutdown::Stop;
use crate::telemetry::metrics::METRICS;

/// The writer has stopped.
#[derive(Debug)]
pub struct WriterGone;

/// The tailers' end. Cloned once per source thread.
pub struct RingTx {
    tx: Sender<Chunk>,
    pool: Arc<ArrayQueue<Chunk>>,
    busy: Arc<AtomicUsize>,
    is_busy: bool,
}

/// Gives emptied chunks back to the tailers; held by the writer's threads.
#[derive(Clone)]
pub struct Recycler(Arc<ArrayQueue<Chunk>>);

impl Recycler {
    pub fn recycle(&self, chunk: Chunk) {
        let _ = self.0.push(chunk);
    }
}

/// The writer's end.
pub struct RingRx {
    rx: Receiver<Chunk>,
    pool: Arc<ArrayQueue<Chunk>>,
    busy: Arc<AtomicUsize>,
}

pub fn ring(capacity: usize) -> (RingTx, RingRx) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let pool = Arc::new(ArrayQueue::new(capacity * 2));
    let busy = Arc::new(AtomicUsize::new(0));
    (
        RingTx {
            tx,
            pool: pool.clone(),
            busy: busy.clone(),
            is_busy: false,
        },
        RingRx { rx, pool, busy },
    )
}

impl Clone for RingTx {
    fn clone(&self) -> Self {
        RingTx {
            tx: self.tx.clone(),
            pool: self.pool.clone(),
            busy: self.busy.clone(),
            is_busy: false,
        }
    }
}

impl Drop for RingTx {
    fn drop(&mut self) {
        self.set_busy(false);
    }
}

impl RingTx {
    /// An empty chunk, reused from the pool when one is there.
    pub fn chunk(&self, labels: Arc<LabelSet>) -> Chunk {
        match self.pool.pop() {
            Some(mut c) => {
                c.reset(labels);
                c
            }
            None => Chunk::new(labels),
        }
    }

    /// Gives back a chunk that was not sent.
    pub fn recycle(&self, chunk: Chunk) {
        let _ = self.pool.push(chunk);
    }

    /// Sends a chunk, blocking while the ring is full. Returns false, and keeps the chunk for
    /// reuse, if ringtail is stopping (or the writer is gone): its position is then not
    /// committed, and it is read again after a restart.
    pub fn send(&self, chunk: Chunk, stop: &Stop) -> bool {
        let mut chunk = chunk;
        let mut blocked: Option<Instant> = None;
        let sent = loop {
            match self.tx.send_timeout(chunk, Duration::from_millis(50)) {
                Ok(()) => break true,
                Err(SendTimeoutError::Disconnected(c)) => {
                    self.recycle(c);
                    break false;
                }
                Err(SendTimeoutError::Timeout(c)) => {
                    blocked.get_or_insert_with(Instant::now);
                    if stop.stopping() {
                        self.recycle(c);
                        break false;
                    }
                    chunk = c;
                }
            }
        };
        if let Some(t) = blocked {
            METRICS.ring_full_seconds.inc_by(t.elapsed().as_secs_f64());
        }
        sent
    }

    /// Sends without blocking, for a caller that waits on its own timer (the async events
    /// shipper): `Ok(None)` when sent, `Ok(Some(chunk))` when the ring is full, `Err` when the
    /// writer is gone (the chunk is kept for reuse).
    pub fn try_send(&self, chunk: Chunk) -> Result<Option<Chunk>, WriterGone> {
        match self.tx.try_send(chunk) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(c)) => Ok(Some(c)),
            Err(TrySendError::Disconnected(c)) => {
                self.recycle(c);
                Err(WriterGone)
            }
        }
    }

    /// Tells the writer whether this source has more to read right now. When none has, the
    /// writer flushes at once instead of waiting for `max_wait`.
    pub fn set_busy(&mut self, busy: bool) {
        if busy != self.is_busy {
            self.is_busy = busy;
            if busy {
                self.busy.fetch_add(1, Ordering::AcqRel);
            } else {
                self.busy.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl RingRx {
    pub fn recv_timeout(&self, d: Duration) -> Result<Chunk, RecvTimeoutError> {
        self.rx.recv_timeout(d)
    }

    /// True when the ring is empty and every source said it has nothing more to read.
    pub fn sources_idle(&self) -> bool {
        self.rx.is_empty() && self.busy.load(Ordering::Acquire) == 0
    }

    /// A handle that returns emptied chunks to the tailers.
    pub fn recycler(&self) -> Recycler {
        Recycler(self.pool.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ring_blocks_until_stop() {
        let (tx, rx) = ring(1);
        let stop = Stop::default();
        let labels = LabelSet::new([]);
        assert!(tx.send(tx.chunk(labels.clone()), &stop));
        stop.begin(Duration::from_secs(1));
        assert!(!tx.send(tx.chunk(labels), &stop));
        assert!(rx.recv_timeout(Duration::from_millis(10)).is_ok());
    }

    #[test]
    fn idle_only_when_no_source_is_busy() {
        let (mut a, rx) = ring(4);
        let mut b = a.clone();
        assert!(rx.sources_idle());
        a.set_busy(true);
        b.set_busy(true);
        b.set_busy(true);
        assert!(!rx.sources_idle());
        a.set_busy(false);
        assert!(!rx.sources_idle());
        drop(b);
        assert!(rx.sources_idle());
    }

    #[test]
    fn chunks_are_reused() {
        let (tx, rx) = ring(2);
        let mut c = tx.chunk(LabelSet::new([]));
        c.data.reserve(4096);
        let cap = c.data.capacity();
        rx.recycler().recycle(c);
        let again = tx.chunk(LabelSet::new([]));
        assert!(again.data.capacity() >= cap && again.data.is_empty());
    }
}
