//! Backoff between attempts to send one batch: exponential with jitter, as dskit's (Alloy's):
//! each wait is random in `[d, 2d)`, and `d` doubles from `min_backoff` up to `max_backoff`.

use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    /// Attempts that failed so far.
    pub retries: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
            retries: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.retries += 1;
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = base.mul_f64(fastrand::f64());
        (base + jitter).min(self.max).max(self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(5));
        let mut b = Backoff::new(min, max);
        let mut base = min;
        for _ in 0..10 {
            let w = b.next_wait();
            assert!(
                w >= base.min(max) && w <= (base * 2).min(max),
                "{w:?} for {base:?}"
            );
            base = (base * 2).min(max);
        }
        assert_eq!(b.retries, 10);
        // At the cap, jitter cannot push past it.
        assert_eq!(b.next_wait(), max);
    }
}
