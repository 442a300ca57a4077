//! Loki misbehaving (issue scenarios 5 and 6): an outage under 50 MB/s, a 429 storm, and a Loki
//! that takes 2 s per request.
//! Numbered lines are written throughout; every one must arrive exactly once (contract §2: a 429
//! stores nothing and is retried, a slow answer is waited for), the retry schedule must be the
//! jittered exponential backoff of src/sink/retry.rs, and the `loki_write_*` and `ringtail_*`
//! metrics (contract §4) must agree with what the receiver saw.
//!
//! The scenarios take turns: they time things (backoff gaps, a throughput ceiling, memory) that
//! a second ringtail on the same two cores would blur. `RINGTAIL_SOAK=1` makes the outage the
//! issue's full five minutes (15 GB of logs on disk) instead of 15 s.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::numbered::{Bench, GenConfig, GenReport, Generator, MIN_LINE};
use support::*;

/// `loki.retry` of the test config (asserted in [`Bench::new`]): the backoff's `d` starts here…
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// …and doubles up to here.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// `loki.batch.max_bytes` of the test config: the most line bytes one request carries.
const BATCH_MAX_BYTES: u64 = 1 << 20;
/// What a gap between two attempts may add to the wait ringtail chose: the 429 travelling
/// back, the next request (the same ~1 MiB body) going out, and the receiver decoding it before
/// it stamps `at` (a debug build, beside ringtail and the writer on two cores). Measured: 25 to
/// 50 ms (the gaps at the cap, where the wait is exactly 1 s, show it).
const GAP_SLACK: Duration = Duration::from_millis(200);
/// The write rate: four times what the slow Loki can take (one 1 MiB batch per 2 s), well
/// under what a debug ringtail ships to a prompt one (> 5 MB/s).
const RATE: u64 = 2_000_000;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGTERM, and exit 0 within the test config's deadline (max(10 s, loki.timeout 5 s)).
fn stop_in_time(rt: &mut Ringtail) {
    rt.sigterm();
    assert!(
        rt.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        rt.logs()
    );
}

/// `containers` numbered containers, and the retry timings the backoff bounds below assume.
fn bench(containers: usize) -> Bench {
    let b = Bench::new(containers);
    let cfg = b.w.config("");
    assert!(
        cfg.contains("retry: { min_backoff: 100ms, max_backoff: 1s, max_retries: 0 }"),
        "the constants above must follow the test config:\n{cfg}"
    );
    b
}

impl Bench {
    /// Two containers at [`RATE`], never rotated: these scenarios are about Loki, and a rotated
    /// file compressed while ringtail is held back would be a loss by design (contract §2).
    fn write(&self) -> Generator {
        Generator::start(
            &self.w.pods(),
            GenConfig {
                containers: 2,
                bytes_per_sec: RATE,
                max_size: 1 << 30,
                monitor: Duration::from_secs(10),
                max_files: 5,
            },
        )
    }

    /// Waits until every line written has arrived and the receiver has been quiet for a
    /// second; false after `timeout`.
    fn wait_all(&self, report: &GenReport, timeout: Duration) -> bool {
        wait_until(timeout, || self.checker().distinct() >= report.lines)
            && self.w.rx.wait_quiet(Duration::from_secs(1))
    }

    /// Every line of `report` arrived exactly once, as written and in order; and ringtail
    /// counts exactly those as sent, and nothing as dropped.
    fn assert_exactly_once(&self, report: &GenReport, m: &str, rt: &Ringtail) {
        let ch = self.checker();
        let missing = ch.missing_ranges(report.lines);
        let ctx = || {
            format!(
                "{} lines written ({:.1} MB/s); stored {}, distinct {}, duplicates {}, past the \
                 end {}; missing {:?}; unknown {:?}; wrong {:?}; bad duplicates {:?}\n{}\n{}",
                report.lines,
                report.mb_per_sec(),
                ch.stored(),
                ch.distinct(),
                ch.duplicates(),
                ch.beyond(report.lines),
                &missing[..missing.len().min(10)],
                ch.unknown(),
                ch.wrong(),
                ch.bad_duplicates(),
                self.w.rx.summary(),
                rt.logs()
            )
        };
        assert_eq!(ch.distinct(), report.lines, "{}", ctx());
        assert_eq!(ch.stored(), report.lines, "{}", ctx());
        assert_eq!(ch.beyond(report.lines), 0, "{}", ctx());
        assert_eq!(ch.unknown().0, 0, "{}", ctx());
        assert_eq!(ch.wrong().0, 0, "{}", ctx());
        // No rotation here, so each container is one file: its lines arrive in order (batches
        // sealed side by side are pushed in the order they were cut).
        assert_eq!(ch.backwards().0, 0, "{:?}\n{}", ch.backwards().1, ctx());
        let host = format!("127.0.0.1:{}", self.w.rx.port());
        let labels = format!("{{host=\"{host}\",tenant=\"\"}}");
        assert_eq!(
            metric_value(m, &format!("loki_write_sent_entries_total{labels}")),
            Some(report.lines as f64),
            "{m}"
        );
        assert_eq!(
            metric_sum(m, "loki_write_dropped_entries_total"),
            0.0,
            "{m}"
        );
        assert_eq!(metric_sum(m, "loki_write_dropped_bytes_total"), 0.0, "{m}");
    }
}

/// A series of `loki_write_request_duration_seconds` for the answers with `status`.
fn duration_series(rx: &LokiReceiver, suffix: &str, status: u16, le: Option<&str>) -> String {
    let le = le.map(|l| format!("le=\"{l}\",")).unwrap_or_default();
    format!(
        "loki_write_request_duration_seconds_{suffix}{{{le}status_code=\"{status}\",host=\"127.0.0.1:{}\",tenant=\"\"}}",
        rx.port()
    )
}

fn retries_series(rx: &LokiReceiver) -> String {
    format!(
        "loki_write_batch_retries_total{{host=\"127.0.0.1:{}\",tenant=\"\"}}",
        rx.port()
    )
}

/// One attempt that got a 429, and the attempt after it (same batch, resent).
struct Gap {
    /// 1 for the first retry of a batch, 2 for the second, ...
    retry: u32,
    gap: Duration,
}

/// The 429 answers of the log, as runs: each run is one batch tried again and again (one
/// request is in flight at a time, and a batch is retried until stored), so the k-th 429 of a
/// run is followed by the batch's k-th retry. Panics if a run's attempts are not one batch.
fn retry_runs(log: &[RequestRecord]) -> Vec<Vec<Gap>> {
    let mut runs: Vec<Vec<Gap>> = Vec::new();
    let mut open = false;
    for (i, r) in log.iter().enumerate() {
        if r.status != 429 {
            open = false;
            continue;
        }
        let next = log
            .get(i + 1)
            .unwrap_or_else(|| panic!("request #{} got 429 and was never tried again", r.seq));
        assert!(
            next.body_len == r.body_len && next.entries == r.entries,
            "request #{} ({} entries, {} bytes) after a 429 to #{} ({} entries, {} bytes) is not \
             the same batch again",
            next.seq,
            next.entries,
            next.body_len,
            r.seq,
            r.entries,
            r.body_len
        );
        if !open {
            runs.push(Vec::new());
            open = true;
        }
        let run = runs.last_mut().expect("run");
        run.push(Gap {
            retry: run.len() as u32 + 1,
            gap: next.at.duration_since(r.at),
        });
    }
    runs
}

/// The range of the wait before retry `k` (1-based), per src/sink/retry.rs (dskit's schedule):
/// `[lo, hi)` starts at `[min_backoff, 2·min_backoff)` and both ends double until `hi` reaches
/// `max_backoff`, then stay. Here: 100–200 ms, 200–400, 400–800, then 800–1000 from the fourth
/// retry on.
fn wait_bounds(k: u32) -> (Duration, Duration) {
    let (mut lo, mut hi) = (MIN_BACKOFF, (MIN_BACKOFF * 2).min(MAX_BACKOFF));
    for _ in 1..k {
        if hi < MAX_BACKOFF {
            (lo, hi) = ((lo * 2).min(MAX_BACKOFF), (hi * 2).min(MAX_BACKOFF));
        }
    }
    (lo, hi)
}

/// A 429 storm: first six batches answered 429, 429, 204 (many short retry runs, to see the
/// jitter of the first two waits), then every request answered 429 for 5 s (one long run, up
/// to the cap). Lines are written at 2 MB/s throughout.
#[test]
fn a_429_storm_is_retried_with_jittered_backoff_and_nothing_is_lost() {
    let _serial = serial();
    let t0 = Instant::now();
    let mut b = bench(2);
    // One lane: the assertions follow one batch through its attempts (request by request) and
    // count one request per delay. The writer-wide backoff across lanes, Retry-After and
    // overlapping pushes are tested in tests/in_flight.rs.
    b.loki_keys = "max_in_flight: 1\n".into();
    let mut rt = b.start();
    let gen = b.write();
    thread::sleep(Duration::from_secs(1));

    const SHORT_RUNS: usize = 6;
    let before = b.w.rx.requests();
    b.w.rx.set_responses([429, 429, 204].repeat(SHORT_RUNS));
    assert!(
        wait_until(Duration::from_secs(20), || b.w.rx.requests()
            > before + 3 * SHORT_RUNS),
        "the programmed answers were not all used\n{}\n{}",
        b.w.rx.summary(),
        rt.logs()
    );
    const STORM: Duration = Duration::from_secs(5);
    b.w.rx.fail_for(STORM, 429);
    thread::sleep(STORM);
    // The batch retried through the storm gets through at its next attempt, within a second.
    let storm_end = b.w.rx.requests();
    assert!(
        wait_until(Duration::from_secs(3), || b.w.rx.requests() > storm_end),
        "no request after the storm\n{}",
        rt.logs()
    );
    thread::sleep(Duration::from_secs(1));
    let report = gen.stop();
    assert!(
        b.wait_all(&report, Duration::from_secs(60)),
        "not every line arrived after the storm"
    );

    let m = metrics(b.w.port);
    b.assert_exactly_once(&report, &m, &rt);

    let rx = &b.w.rx;
    let counts = rx.status_counts();
    let (n429, n204) = (rx.count_status(429), rx.count_status(204));
    assert_eq!(
        n429 + n204,
        rx.requests(),
        "only 204 and 429 were programmed: {counts:?}"
    );
    // Every 429 is one retry, and one timed request; every 204 one timed request.
    assert_eq!(
        metric_value(&m, &retries_series(rx)),
        Some(n429 as f64),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, &duration_series(rx, "count", 429, None)),
        Some(n429 as f64),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, &duration_series(rx, "count", 204, None)),
        Some(n204 as f64),
        "{m}"
    );

    let log = rx.log();
    let runs = retry_runs(&log);
    let lens: Vec<usize> = runs.iter().map(Vec::len).collect();
    eprintln!("429 storm: statuses {counts:?}, runs of 429 {lens:?}");
    for (i, run) in runs.iter().enumerate() {
        let gaps: Vec<String> = run
            .iter()
            .map(|g| format!("{}:{}ms", g.retry, g.gap.as_millis()))
            .collect();
        eprintln!("  run {i}: {}", gaps.join(" "));
    }
    assert_eq!(lens.len(), SHORT_RUNS + 1, "{}", rx.summary());
    assert!(lens[..SHORT_RUNS].iter().all(|&n| n == 2), "{lens:?}");
    // 5 s of 429s take at least five attempts: the waits before them add up to at most
    // 200 + 400 + 800 + 1000 ms plus four slacks, under 4 s.
    assert!(lens[SHORT_RUNS] >= 5, "{lens:?}");
    assert_eq!(lens.iter().sum::<usize>(), n429);

    // The gaps follow the schedule: at least the wait ringtail chose (the next request is
    // stamped after it arrives and is decoded), at most the longest wait plus the slack.
    // Jitter: each gap, placed in its range as (gap - lo) / (hi - lo), should be spread over
    // [0, 1) rather than all at one point, at the cap too.
    let mut placed = Vec::new();
    let mut capped = Vec::new();
    for g in runs.iter().flatten() {
        let (lo, hi) = wait_bounds(g.retry);
        assert!(
            g.gap >= lo && g.gap <= hi + GAP_SLACK,
            "retry {}: {:?} between attempts, want {lo:?}..={:?}",
            g.retry,
            g.gap,
            hi + GAP_SLACK
        );
        placed.push((g.gap - lo).as_secs_f64() / (hi - lo).as_secs_f64());
        if hi == MAX_BACKOFF {
            capped.push(g.gap);
        }
    }
    assert_eq!(placed.len(), n429);
    let lo = placed.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = placed.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    eprintln!(
        "  jitter: each gap's place in its range: {:?}",
        placed
            .iter()
            .map(|u| (u * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    // At least 17 draws (12 short-run retries, 5 in the storm) within a quarter of the range
    // (slack included): less than 1 in 10^8.
    assert!(hi - lo > 0.25, "no jitter: {placed:?}");
    // The storm's run reached the cap: its fourth and later waits are in [800 ms, 1 s).
    assert!(!capped.is_empty(), "the storm never reached the cap");

    stop_in_time(&mut rt);
    eprintln!(
        "429 storm: {} lines ({:.1} MB at {:.1} MB/s), {n429} × 429, {n204} × 204, {:.1?} in all",
        report.lines,
        report.bytes as f64 / 1e6,
        report.mb_per_sec(),
        t0.elapsed()
    );
}

/// Loki answers every request after 2 s, while lines are written at four times what that
/// carries: the requests are waited for (5 s timeout), never retried, and the readers stop
/// reading instead of buffering (bounded RSS, the ring full, the lag on disk). Then Loki is
/// prompt again and everything drains.
#[test]
fn a_slow_loki_holds_readers_back_without_retries_or_loss() {
    let _serial = serial();
    let t0 = Instant::now();
    let mut b = bench(2);
    // One lane: the assertions follow one batch through its attempts (request by request) and
    // count one request per delay. The writer-wide backoff across lanes, Retry-After and
    // overlapping pushes are tested in tests/in_flight.rs.
    b.loki_keys = "max_in_flight: 1\n".into();
    const DELAY: Duration = Duration::from_secs(2);
    b.w.rx.set_delay(DELAY);
    let mut rt = b.start();
    let gen = b.write();
    let rtm = b.w.port;

    // Sample the lag while the writer runs: it must grow, the files on disk holding it. Write
    // for 6 s, and on until the writer's buffers (a batch per sealer and a few hand-offs) are
    // full and the ring with them, which takes longer when ringtail reads slowly (a busy CI
    // machine); at most 20 s.
    let mut max_lag = 0.0f64;
    let mut ring_full = 0.0f64;
    let writing = Instant::now();
    while writing.elapsed() < Duration::from_secs(6)
        || (ring_full <= 0.0 && writing.elapsed() < Duration::from_secs(20))
    {
        thread::sleep(Duration::from_millis(250));
        let m = metrics(rtm);
        if let Some(lag) = metric_value(&m, "ringtail_read_lag_bytes{source=\"pods\"}") {
            max_lag = max_lag.max(lag);
        }
        ring_full = metric_value(&m, "ringtail_ring_full_seconds_total").unwrap_or(-1.0);
    }
    let wrote_for = writing.elapsed();
    let report = gen.stop();
    let peak_kib = status_kib(rt.pid(), "VmHWM");
    let stored_slow = b.checker().stored();
    eprintln!(
        "slow Loki: {} lines ({:.1} MB) written in {:.1?}; {} stored by then; read lag up to \
         {:.1} MB; ring full {ring_full:.1} s; VmHWM {peak_kib} KiB",
        report.lines,
        report.bytes as f64 / 1e6,
        report.elapsed,
        stored_slow,
        max_lag / 1e6,
    );

    let delayed = b.w.rx.set_delay_counting(Duration::ZERO);
    let drain = Instant::now();
    assert!(
        b.wait_all(&report, Duration::from_secs(60)),
        "not every line arrived once Loki was prompt again\n{}",
        rt.logs()
    );
    // Committed to the end of every file: the lag gauge (updated at discovery's scans) is 0.
    assert!(
        wait_until(Duration::from_secs(10), || metric_value(
            &metrics(rtm),
            "ringtail_read_lag_bytes{source=\"pods\"}"
        ) == Some(0.0)),
        "read lag not back to 0:\n{}",
        metrics(rtm)
    );
    let drained = drain.elapsed();

    let m = metrics(rtm);
    b.assert_exactly_once(&report, &m, &rt);

    let rx = &b.w.rx;
    let n = rx.requests();
    assert_eq!(
        rx.count_status(204),
        n,
        "only 204 was programmed: {:?}",
        rx.status_counts()
    );
    assert_eq!(metric_value(&m, &retries_series(rx)), Some(0.0), "{m}");
    assert_eq!(
        metric_value(&m, &duration_series(rx, "count", 204, None)),
        Some(n as f64),
        "{m}"
    );
    // The requests answered after 2 s took more than 1 s, the prompt ones less: the
    // histogram's 1 s bucket holds exactly the latter.
    assert_eq!(
        metric_value(&m, &duration_series(rx, "bucket", 204, Some("1.0"))),
        Some((n - delayed) as f64),
        "{delayed} of {n} requests were delayed\n{m}"
    );
    // One request per 2 s while the writer ran (6 s: three; the first leaves about half a
    // second after the start, so one more or less if it was much later or sooner).
    let per_delay = (wrote_for.as_secs_f64() / DELAY.as_secs_f64()).round() as usize;
    assert!(
        (per_delay.saturating_sub(1)..=per_delay + 1).contains(&delayed),
        "{delayed} requests during the slow phase"
    );
    // No request carried more than one batch: the backlog waited on disk, not in a request.
    let most = rx.log().iter().map(|r| r.entries).max().unwrap_or(0);
    assert!(
        most as u64 <= BATCH_MAX_BYTES / MIN_LINE as u64,
        "a request of {most} entries\n{}",
        rx.summary()
    );
    assert!(
        max_lag > 4e6,
        "read lag at most {max_lag} bytes: 12 MB written, and at most {delayed} requests of \
         at most 1 MiB of lines answered (or under way) by then"
    );
    assert!(
        ring_full > 0.0,
        "ringtail_ring_full_seconds_total {ring_full}"
    );
    assert!(
        peak_kib < 100 << 10,
        "VmHWM {peak_kib} KiB: the backlog is buffered in memory"
    );

    stop_in_time(&mut rt);
    eprintln!(
        "slow Loki: {n} requests, {delayed} delayed; drained in {drained:.1?}; {:.1?} in all",
        t0.elapsed()
    );
}

const OUTAGE_CONTAINERS: usize = 8;

/// Loki down (503 to everything) while containers write 50 MB/s, then back. While it is down,
/// the readers must stop once the pipeline's fixed buffers are full (the files are the buffer,
/// contract §2), resident memory must stay flat, and the read lag must grow by what is written;
/// once it is back, every line arrives exactly once.
#[test]
fn a_loki_outage_under_50_mb_per_s_pauses_readers_and_loses_nothing() {
    let _serial = serial();
    let soak = std::env::var("RINGTAIL_SOAK").is_ok_and(|v| v == "1");
    let outage = Duration::from_secs(if soak { 300 } else { 15 });
    // The buffers (ring, batch, sealed batch) fill within a second at this rate; give it five.
    let settle = Duration::from_secs(5);
    let mut b = bench(OUTAGE_CONTAINERS);
    let mut rt = b.start();
    let gen = Generator::start(
        &b.w.pods(),
        GenConfig {
            containers: OUTAGE_CONTAINERS,
            bytes_per_sec: 50_000_000,
            // Never rotated: during a long outage kubelet would delete rotated files, a loss by
            // design (the files are the buffer), and not what this scenario is about.
            max_size: 1 << 40,
            monitor: Duration::from_secs(10),
            max_files: 5,
        },
    );
    let rtm = b.w.port;
    let pid = rt.pid();
    let read =
        |m: &str| metric_value(m, "ringtail_read_bytes_total{source=\"pods\"}").unwrap_or(0.0);
    let lag = |m: &str| metric_value(m, "ringtail_read_lag_bytes{source=\"pods\"}").unwrap_or(0.0);

    // Shipping first, so that the outage starts with a warm pipeline.
    assert!(
        wait_until(Duration::from_secs(20), || b.checker().distinct() > 0),
        "nothing arrived before the outage\n{}",
        rt.logs()
    );
    b.w.rx.set_default(503);
    let down = Instant::now();
    let written_at_down = gen.bytes();
    thread::sleep(settle);
    let m = metrics(rtm);
    let (read_settled, rss_settled) = (read(&m), status_kib(pid, "VmRSS"));
    let written_settled = gen.bytes();
    let mut rss_max = rss_settled;
    while down.elapsed() < outage {
        thread::sleep(Duration::from_millis(250));
        rss_max = rss_max.max(status_kib(pid, "VmRSS"));
    }
    let m = metrics(rtm);
    let (read_end, lag_end) = (read(&m), lag(&m));
    let written_end = gen.bytes();
    let report = gen.stop();
    let hwm = status_kib(pid, "VmHWM");
    let failed = b.w.rx.count_status(503);
    let stored_before = b.checker().stored();
    eprintln!(
        "Loki outage {outage:?} at {:.1} MB/s: {:.0} MB written while down; read while down after \
         {settle:?}: {} bytes; read lag at the end {:.0} MB; VmRSS {} KiB after {settle:?}, at \
         most {} KiB; VmHWM {hwm} KiB; {failed} requests answered 503",
        report.mb_per_sec(),
        (written_end - written_at_down) as f64 / 1e6,
        read_end - read_settled,
        lag_end / 1e6,
        rss_settled,
        rss_max,
    );
    b.w.rx.set_default(204);
    assert_eq!(
        read_end, read_settled,
        "the readers went on reading while Loki was down"
    );
    assert!(
        rss_max <= rss_settled + 4096 && hwm <= 64 * 1024,
        "resident memory grew during the outage: {rss_settled} KiB after {settle:?}, \
         {rss_max} KiB at most, peak {hwm} KiB"
    );
    assert!(
        lag_end >= (written_end - written_settled) as f64,
        "the read lag ({lag_end} bytes) must hold at least what was written since the readers \
         stopped ({} bytes)",
        written_end - written_settled
    );
    assert!(
        failed > 0,
        "no request during the outage\n{}",
        b.w.rx.summary()
    );

    let drain = Instant::now();
    let timeout = Duration::from_secs(60) + Duration::from_secs_f64(report.bytes as f64 / 5e6);
    assert!(
        b.wait_all(&report, timeout),
        "not every line arrived within {timeout:?} of Loki's return\n{}",
        rt.logs()
    );
    eprintln!(
        "Loki back: {} lines ({:.0} MB) of which {} arrived after the outage, drained in {:.1?}",
        report.lines,
        report.bytes as f64 / 1e6,
        report.lines - stored_before,
        drain.elapsed()
    );
    let m = metrics(rtm);
    b.assert_exactly_once(&report, &m, &rt);
    assert_eq!(
        metric_value(&m, &duration_series(&b.w.rx, "count", 503, None)),
        Some(failed as f64),
        "{m}"
    );
    assert!(
        metric_value(&m, &retries_series(&b.w.rx)).unwrap_or(0.0) >= failed as f64,
        "{m}"
    );
    stop_in_time(&mut rt);
}
