//! How many pushes may be in flight at once, and when the writer as a whole backs off.
//!
//! Why: with one push in flight, throughput is one batch per round trip: 1 MiB per 50 ms is
//! 20 MB/s, a fifth of a node's burst. A fixed, large concurrency would serve a distant Loki but
//! pile onto one that is struggling. So the limit adapts, as Vector's adaptive request
//! concurrency and TCP do: it grows while round trips stay flat and answers succeed, and it is
//! cut when Loki pushes back.
//!
//! The algorithm, over `[min, max]` = `loki.{min,max}_in_flight` (fixed when they are equal):
//! - The limit starts at `min`. Time is cut into windows of about one smoothed round trip (at
//!   least [`MIN_WINDOW`]). A window ends at the first answer past its length; its round trips
//!   are those of the pushes that started in it.
//! - Growth: a window whose pushes all succeeded, whose in-flight count reached the limit (an
//!   unused limit proves nothing), and whose mean round trip stayed within [`RTT_RISE`] of the
//!   baseline (plus [`RTT_SLACK`], so that sub-millisecond noise on a near Loki is not a
//!   signal) raises the limit: doubling while in slow start, then by one per window.
//! - A mean round trip above that cuts the limit by [`RTT_DECREASE`] and ends slow start: Loki
//!   (or the path to it) is queueing.
//! - Backpressure (429, 5xx, a transport error or a timeout) halves the limit at once and ends
//!   slow start. Once per event: answers to pushes that started before the last cut do not cut
//!   again, so 32 pushes failing together halve the limit once, not 32 times.
//! - The baseline is a moving average (weight 1/8) of the means of windows without
//!   backpressure.
//!
//! Backoff is the writer's, not a lane's (`sink::retry`, dskit's schedule): after a failure no
//! push starts before the wait has passed, or `Retry-After` when Loki sends a longer one (capped
//! at `loki.retry.max_backoff`, so a bogus header cannot stall the node for hours). Failures of
//! pushes that were already in flight when the wait was set do not step the schedule again; a
//! 2xx resets it. So an outage costs Loki one attempt per wait, whatever the concurrency.
//!
//! The current limit is `ringtail_loki_in_flight_limit`, the pushes in flight
//! `ringtail_loki_in_flight`; the round trips are in `loki_write_request_duration_seconds`.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::shutdown::Stop;
use crate::telemetry::metrics::METRICS;

use super::retry::Backoff;

/// Shortest window: below it, a window holds too few answers to mean anything.
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// A window's mean round trip above `RTT_RISE` × baseline (+ slack) is queueing.
const RTT_RISE: f64 = 1.5;
const RTT_SLACK: f64 = 0.005;
/// The cut when round trips rise (a mild signal).
const RTT_DECREASE: f64 = 0.9;

/// How an answer counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    /// 2xx.
    Stored,
    /// 429, 5xx, transport error, timeout; `retry_after` is Loki's `Retry-After`, if any.
    Backpressure { retry_after: Option<Duration> },
    /// Any other status: a final answer, and no signal about load.
    Final,
}

pub struct Limiter {
    min: usize,
    max: usize,
    state: Mutex<State>,
    wake: Condvar,
    max_backoff: Duration,
    /// Tests move the limiter's clock ahead instead of sleeping through round trips, so that
    /// their windows do not depend on how busy the machine is.
    #[cfg(test)]
    skew_ns: std::sync::atomic::AtomicU64,
}

struct State {
    limit: usize,
    in_flight: usize,
    slow_start: bool,
    /// Smoothed round trip, seconds; none before the first window.
    baseline: Option<f64>,
    window: Window,
    backoff: Backoff,
    min_backoff: Duration,
    /// No push starts before this.
    not_before: Instant,
    /// When the limit was last cut for backpressure, or the backoff last stepped.
    last_cut: Option<Instant>,
}

struct Window {
    start: Instant,
    rtt_sum: f64,
    answers: u32,
    /// The in-flight count reached the limit during the window.
    full: bool,
    pressure: bool,
}

impl Window {
    fn new(now: Instant, full: bool) -> Window {
        Window {
            start: now,
            rtt_sum: 0.0,
            answers: 0,
            full,
            pressure: false,
        }
    }
}

/// A push that may start; hand it back with its answer.
pub struct Permit {
    started: Instant,
}

impl Limiter {
    pub fn new(min: usize, max: usize, min_backoff: Duration, max_backoff: Duration) -> Limiter {
        let max = max.max(1);
        let min = min.clamp(1, max);
        METRICS.loki_in_flight_limit.set(min as i64);
        METRICS.loki_in_flight.set(0);
        Limiter {
            min,
            max,
            state: Mutex::new(State {
                limit: min,
                in_flight: 0,
                slow_start: true,
                baseline: None,
                window: Window::new(Instant::now(), false),
                backoff: Backoff::new(min_backoff, max_backoff),
                min_backoff,
                not_before: Instant::now(),
                last_cut: None,
            }),
            wake: Condvar::new(),
            max_backoff,
            #[cfg(test)]
            skew_ns: Default::default(),
        }
    }

    fn now(&self) -> Instant {
        #[cfg(test)]
        return Instant::now()
            + Duration::from_nanos(self.skew_ns.load(std::sync::atomic::Ordering::Relaxed));
        #[cfg(not(test))]
        Instant::now()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Waits until a push may start: fewer than the limit in flight, and the writer's backoff
    /// over. None once the stop deadline has passed.
    pub fn acquire(&self, stop: &Stop) -> Option<Permit> {
        let mut st = self.lock();
        loop {
            if stop.past_deadline() {
                return None;
            }
            let now = self.now();
            if st.in_flight < st.limit && now >= st.not_before {
                st.in_flight += 1;
                if st.in_flight >= st.limit {
                    st.window.full = true;
                }
                METRICS.loki_in_flight.set(st.in_flight as i64);
                return Some(Permit { started: now });
            }
            // Woken by a release; the timeout bounds the wait for the backoff's end and for
            // the stop deadline (checked above).
            let wait = if now < st.not_before {
                (st.not_before - now).min(Duration::from_millis(100))
            } else {
                Duration::from_millis(100)
            };
            st = self
                .wake
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends a push with its round trip and answer. On backpressure, returns how long the writer
    /// now waits before the next push.
    pub fn release(&self, permit: Permit, answer: Answer) -> Option<Duration> {
        let now = self.now();
        let rtt = now.duration_since(permit.started).as_secs_f64();
        let mut st = self.lock();
        st.in_flight -= 1;
        METRICS.loki_in_flight.set(st.in_flight as i64);
        let wait = match answer {
            Answer::Stored => {
                if st.not_before <= now {
                    st.backoff = Backoff::new(st.min_backoff, self.max_backoff);
                }
                // Only pushes started in this window speak for it: the answers of the last
                // window's stragglers would blur a change of limit by one window.
                if permit.started >= st.window.start {
                    st.window.rtt_sum += rtt;
                    st.window.answers += 1;
                }
                None
            }
            Answer::Final => None,
            Answer::Backpressure { retry_after } => {
                st.window.pressure = true;
                let same_event = st.last_cut.is_some_and(|cut| permit.started < cut);
                if !same_event {
                    st.last_cut = Some(now);
                    st.slow_start = false;
                    st.limit = (st.limit / 2).max(self.min);
                    let mut wait = st.backoff.next_wait();
                    if let Some(ra) = retry_after {
                        wait = wait.max(ra.min(self.max_backoff));
                    }
                    st.not_before = st.not_before.max(now + wait);
                }
                Some(st.not_before.saturating_duration_since(now))
            }
        };
        self.end_window(&mut st, now);
        METRICS.loki_in_flight_limit.set(st.limit as i64);
        drop(st);
        self.wake.notify_all();
        wait
    }

    fn end_window(&self, st: &mut State, now: Instant) {
        // 0.9 of the round trip: the answers of one round of pushes end it, not the next round.
        let length = st.baseline.map_or(MIN_WINDOW, |b| {
            Duration::from_secs_f64(b * 0.9).max(MIN_WINDOW)
        });
        if now.duration_since(st.window.start) < length {
            return;
        }
        let w = std::mem::replace(&mut st.window, Window::new(now, st.in_flight >= st.limit));
        if w.pressure || w.answers == 0 {
            return;
        }
        let mean = w.rtt_sum / f64::from(w.answers);
        let base = *st.baseline.get_or_insert(mean);
        if mean > base * RTT_RISE + RTT_SLACK {
            st.slow_start = false;
            st.limit = ((st.limit as f64 * RTT_DECREASE) as usize).max(self.min);
        } else if w.full {
            st.limit = if st.slow_start {
                st.limit * 2
            } else {
                st.limit + 1
            }
            .min(self.max);
        }
        st.baseline = Some(base + (mean - base) / 8.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The round trip the tests play, on the limiter's clock (no sleeping).
    const RTT: Duration = Duration::from_millis(25);

    impl Limiter {
        fn advance(&self, d: Duration) {
            let ns = u64::try_from(d.as_nanos()).unwrap();
            self.skew_ns
                .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn limiter(min: usize, max: usize) -> Limiter {
        Limiter::new(min, max, Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Fills the limit, lets `rtt` pass, and answers every push: one window.
    fn round(l: &Limiter, stop: &Stop, rtt: Duration, answer: Answer) -> usize {
        let n = l.limit();
        let permits: Vec<Permit> = (0..n).map(|_| l.acquire(stop).unwrap()).collect();
        l.advance(rtt);
        for p in permits {
            l.release(p, answer);
        }
        n
    }

    #[test]
    fn flat_round_trips_grow_the_limit_to_its_max_doubling_first() {
        let (l, stop) = (limiter(1, 16), Stop::default());
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(round(&l, &stop, RTT, Answer::Stored));
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 16, 16, 16]);
    }

    #[test]
    fn backpressure_halves_once_per_event_and_backs_the_whole_writer_off() {
        let (l, stop) = (limiter(1, 16), Stop::default());
        for _ in 0..5 {
            round(&l, &stop, RTT, Answer::Stored);
        }
        assert_eq!(l.limit(), 16);
        // 16 pushes in flight all get a 503: one cut, one backoff step.
        let permits: Vec<Permit> = (0..16).map(|_| l.acquire(&stop).unwrap()).collect();
        let waits: Vec<Duration> = permits
            .into_iter()
            .map(|p| {
                l.release(p, Answer::Backpressure { retry_after: None })
                    .unwrap()
            })
            .collect();
        assert_eq!(l.limit(), 8);
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] < Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= waits[0]), "{waits:?}");
        // Nobody starts before the wait is over.
        let t = Instant::now();
        let p = l.acquire(&stop).unwrap();
        assert!(
            t.elapsed() >= waits[0] - Duration::from_millis(5),
            "{:?}",
            t.elapsed()
        );
        // The next failure is a new event: the schedule steps ([100, 200) ms), the limit halves.
        let w = l
            .release(p, Answer::Backpressure { retry_after: None })
            .unwrap();
        assert!(
            w >= Duration::from_millis(100) && w < Duration::from_millis(200),
            "{w:?}"
        );
        assert_eq!(l.limit(), 4);
    }

    #[test]
    fn retry_after_is_honoured_up_to_max_backoff() {
        let (l, stop) = (limiter(4, 4), Stop::default());
        let p = l.acquire(&stop).unwrap();
        let ra = Duration::from_millis(400);
        let w = l
            .release(
                p,
                Answer::Backpressure {
                    retry_after: Some(ra),
                },
            )
            .unwrap();
        assert!(w > Duration::from_millis(390) && w <= ra, "{w:?}");
        // A fixed concurrency stays fixed.
        assert_eq!(l.limit(), 4);
        let p = l.acquire(&stop).unwrap();
        let w = l
            .release(
                p,
                Answer::Backpressure {
                    retry_after: Some(Duration::from_secs(3600)),
                },
            )
            .unwrap();
        assert!(w <= Duration::from_secs(1), "{w:?}");
    }

    #[test]
    fn rising_round_trips_cut_the_limit() {
        let (l, stop) = (limiter(1, 64), Stop::default());
        for _ in 0..5 {
            round(&l, &stop, RTT, Answer::Stored);
        }
        assert_eq!(l.limit(), 32);
        // Round trips five times the baseline: queueing.
        round(&l, &stop, RTT * 6, Answer::Stored);
        round(&l, &stop, RTT * 6, Answer::Stored);
        assert!(l.limit() < 32, "{}", l.limit());
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let (l, stop) = (limiter(1, 16), Stop::default());
        for _ in 0..4 {
            round(&l, &stop, RTT, Answer::Stored);
        }
        assert_eq!(l.limit(), 16);
        let before = l.limit();
        for _ in 0..3 {
            let p = l.acquire(&stop).unwrap();
            l.advance(RTT);
            l.release(p, Answer::Stored);
        }
        assert_eq!(l.limit(), before);
        let l = limiter(1, 16);
        for _ in 0..3 {
            let p = l.acquire(&stop).unwrap();
            l.advance(RTT);
            l.release(p, Answer::Stored);
        }
        // One push at a time under a limit of one fills it: the limit may grow.
        assert!(l.limit() > 1);
    }
}
