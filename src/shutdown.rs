//! Stopping: a flag that every stage polls, and a deadline after which the writer stops retrying.
//!
//! On SIGTERM or SIGINT, sources stop reading, the writer sends what was read, positions are
//! committed, and the process exits 0 within max(10 s, `loki.timeout`) (contract §3). What is not
//! acked by the deadline is simply read again after the restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Stop {
    flag: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    /// Notified by [`begin`](Stop::begin), for [`wait`](Stop::wait).
    begun: Condvar,
}

impl Stop {
    /// Starts stopping; the writer gives up on unsent batches `grace` from now.
    pub fn begin(&self, grace: Duration) {
        let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(Instant::now() + grace);
        }
        self.flag.store(true, Ordering::Release);
        self.begun.notify_all();
    }

    /// Blocks until stopping begins (the main thread has nothing else to do meanwhile).
    pub fn wait(&self) {
        let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        while !self.stopping() {
            d = self.begun.wait(d).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn stopping(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// True once stopping and the deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.stopping()
            && self
                .deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|d| Instant::now() >= d)
    }

    /// Time left before the deadline, once stopping.
    pub fn remaining(&self) -> Option<Duration> {
        let d = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        d.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Sleeps up to `d`, waking early when the deadline passes.
    pub fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.past_deadline() {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_returns_once_another_thread_begins_stopping() {
        let stop = Arc::new(Stop::default());
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            s.begin(Duration::from_secs(5));
        });
        stop.wait();
        assert!(stop.stopping());
        assert!(stop.remaining().is_some_and(|r| r > Duration::from_secs(1)));
        t.join().expect("the stopping thread");
        // Already stopping: returns at once.
        stop.wait();
    }
}
