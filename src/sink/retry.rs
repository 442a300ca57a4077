//! Backoff between attempts to send one batch: exponential with jitter, as dskit's (Alloy's):
//! each wait is random in `[lo, hi)`, starting at `[min_backoff, 2·min_backoff)`, both ends
//! doubling until `hi` reaches `max_backoff`. From there every wait stays in
//! `[lo, max_backoff)`, so retries keep their jitter at the cap: a fleet of ringtails that lost
//! Loki at the same moment does not come back in step.

use std::time::Duration;

pub struct Backoff {
    max: Duration,
    lo: Duration,
    hi: Duration,
    /// Attempts that failed so far.
    pub retries: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            max,
            lo: min,
            hi: (min * 2).min(max),
            retries: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.retries += 1;
        if self.lo >= self.hi {
            return self.lo;
        }
        let wait = self.lo + (self.hi - self.lo).mul_f64(fastrand::f64());
        if self.hi < self.max {
            self.lo = (self.lo * 2).min(self.max);
            self.hi = (self.hi * 2).min(self.max);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_and_keeps_jitter_at_the_cap() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(300));
        let mut b = Backoff::new(min, max);
        // dskit's ranges for 0.5 s and 5 min: [0.5, 1), [1, 2), ... [128, 256), then
        // [256, 300) for good.
        let mut lo = min;
        for _ in 0..9 {
            let w = b.next_wait();
            assert!(w >= lo && w < lo * 2, "{w:?} for [{lo:?}, {:?})", lo * 2);
            lo *= 2;
        }
        assert_eq!(lo, Duration::from_secs(256));
        let capped: Vec<Duration> = (0..100).map(|_| b.next_wait()).collect();
        assert!(capped.iter().all(|&w| w >= lo && w < max), "{capped:?}");
        let spread =
            capped.iter().max().unwrap().as_secs_f64() - capped.iter().min().unwrap().as_secs_f64();
        // 100 uniform draws over 44 s spread over less than 22 s: about 1 in 10^28.
        assert!(spread > 22.0, "{capped:?}");
        assert_eq!(b.retries, 109);
    }

    #[test]
    fn equal_bounds_wait_exactly_that() {
        let d = Duration::from_secs(1);
        let mut b = Backoff::new(d, d);
        assert_eq!((b.next_wait(), b.next_wait()), (d, d));
    }
}
