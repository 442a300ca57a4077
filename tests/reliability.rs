//! Reliability: nothing is lost (contract §2). Numbered lines are written at tens of MB/s while a
//! kubelet rotates and compresses the logs, and ringtail is killed, rotated under, and stopped
//! under load. Every number must reach the receiver exactly as written, and a duplicate is
//! accepted only where a crash explains it.
//!
//! The scenarios take turns (each wants the whole machine). `RINGTAIL_SOAK=1` scales them up
//! (200 crashes; two minutes of writing for the others); `RINGTAIL_SEED=<n>` replays the kill
//! and stop points of a run, whose seed every scenario prints.

mod support;

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::numbered::{
    container_name, Bench, Checker, GenConfig, GenReport, Generator, IN_FLIGHT, MIN_LINE,
};
use support::*;

/// How long before a crash ringtail may have had Loki's answer to a push it re-sends: it writes
/// its positions right after each ack (src/positions/mod.rs), so only that write, on two cores
/// busy with tens of MB/s of logs. Measured from the answer, not from when the receiver stored
/// the lines: a push stored but not yet answered at the kill is in flight, and due again.
const PUSH_SLACK: Duration = Duration::from_secs(1);
/// `loki.batch.max_bytes` in the test config (asserted in [`Bench::new`]): a batch holds at most
/// this many bytes of lines (src/sink/mod.rs cuts a batch before a chunk would pass it; only
/// lines and metadata text count, and this generator's metadata values are constants).
const BATCH_MAX_BYTES: u64 = 1 << 20;
/// Batches a crash can catch between the receiver and the positions file (src/sink/mod.rs): the
/// ones being pushed (one per lane, [`IN_FLIGHT`] lanes), which the receiver may have stored
/// before the kill, and one more, whose write the spacing of slow positions writes may have
/// put off until after those pushes.
const IN_FLIGHT_BATCHES: u64 = IN_FLIGHT as u64 + 1;
/// The contract's stop deadline: max(10 s, `loki.timeout`), and the test config's timeout is 5 s.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// kubelet's lowest allowed `containerLogMonitorInterval` (its config validation refuses less):
/// no real node rotates a container's log more often, nor compresses a rotated file sooner.
const KUBELET_MIN_MONITOR: Duration = Duration::from_secs(3);
/// kubelet's default `containerLogMonitorInterval`.
const KUBELET_MONITOR: Duration = Duration::from_secs(10);
/// How far the writers of the restart scenarios may run ahead of the receiver: half a second
/// at 20 MB/s. A debug ringtail with a debug receiver ships ~12 MB/s on two shared cores, less
/// while it re-sends after crashes, so at 20 MB/s it would fall further behind for as long as
/// the scenario lasts; once it is behind by more than kubelet keeps rotated files, a restart
/// finds them deleted: lines lost by design (contract §2: the files are the buffer), which is
/// not what these scenarios test.
const MAX_AHEAD: u64 = 10_000_000;
/// Time between a restart and the next kill -9, drawn uniformly. A run much shorter than that
/// spends itself starting and commits next to nothing, and a string of them makes no progress
/// while kubelet keeps rotating and deleting: the lines lost by design above. A real crash loop is slower
/// (kubelet's back-off starts at 10 s).
const RUN_BEFORE_KILL_MS: std::ops::Range<u64> = 1500..3500;

static SERIAL: Mutex<()> = Mutex::new(());

/// One scenario at a time: each measures ringtail at a rate that takes most of a small machine.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn soak() -> bool {
    std::env::var("RINGTAIL_SOAK").is_ok_and(|v| v == "1")
}

/// The seed for the random kill and stop points: `RINGTAIL_SEED`, else the clock.
fn seed(scenario: &str) -> u64 {
    let seed = std::env::var("RINGTAIL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{scenario}: seed {seed} (RINGTAIL_SEED={seed} replays it)");
    seed
}

/// Lines of at least [`MIN_LINE`] bytes that one batch can hold.
fn lines_per_batch() -> u64 {
    BATCH_MAX_BYTES / MIN_LINE as u64
}

/// Time for everything written to arrive: ringtail (a debug build here) ships well over 5 MB/s
/// even with the receiver and a fuzzer on the same two cores.
fn drain_timeout(report: &GenReport) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(report.bytes as f64 / 5e6)
}

impl Bench {
    /// kill -9: nothing flushed, nothing committed.
    fn crash(&self, rt: &mut Ringtail) {
        rt.kill9();
        let gone = Instant::now();
        self.checker().run_ended(true, gone);
    }

    /// SIGTERM; asserts exit 0 within the contract's deadline and returns how long it took.
    fn stop(&self, rt: &mut Ringtail) -> Duration {
        let t = Instant::now();
        rt.sigterm();
        let status = rt.wait_exit(STOP_DEADLINE + Duration::from_secs(5));
        let took = t.elapsed();
        self.checker().run_ended(false, Instant::now());
        assert!(
            status.is_some_and(|s| s.success()),
            "SIGTERM under load: {status:?} after {took:?}\n{}",
            rt.logs()
        );
        assert!(
            took <= STOP_DEADLINE,
            "SIGTERM under load: exit took {took:?}, the contract allows {STOP_DEADLINE:?}\n{}",
            rt.logs()
        );
        took
    }

    /// Waits until every line written has arrived and the receiver has been quiet for a second
    /// (late duplicates included); false on timeout.
    fn wait_all(&self, report: &GenReport) -> bool {
        let t = Instant::now();
        let mut next_note = t + Duration::from_secs(5);
        let all = wait_until(drain_timeout(report), || {
            let distinct = self.checker().distinct();
            if Instant::now() >= next_note {
                next_note += Duration::from_secs(5);
                eprintln!(
                    "  {:.0?} after writing stopped: {distinct} of {} lines arrived",
                    t.elapsed(),
                    report.lines
                );
            }
            distinct >= report.lines
        });
        all && self.w.rx.wait_quiet(Duration::from_secs(1))
    }

    /// What to look at when a scenario fails: the accounting, the missing lines with the file
    /// they were written to, the last run's counters, every run's warnings, and ringtail's logs.
    fn diagnose(&self, ch: &Checker, report: &GenReport, rt: &Ringtail) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n==== {} lines written ({:.0} MB in {:.1?}, {:.1} MB/s), {} rotations, {} files \
             compressed; {} entries stored, {} distinct lines, {} duplicates, {} numbers past \
             the last written",
            report.lines,
            report.bytes as f64 / 1e6,
            report.elapsed,
            report.mb_per_sec(),
            report.rotations(),
            report.compressions(),
            ch.stored(),
            ch.distinct(),
            ch.duplicates(),
            ch.beyond(report.lines),
        );
        let missing = ch.missing_ranges(report.lines);
        let total: u64 = missing.iter().map(|m| m.2).sum();
        let _ = writeln!(
            s,
            "missing: {total} lines in {} runs (of one container's consecutive lines)",
            missing.len()
        );
        for (first, last, n) in missing.iter().take(20) {
            let _ = writeln!(
                s,
                "  {first}..={last} ({n} lines of {}), written to {}",
                container_name((first % report.cfg.containers as u64) as usize),
                report.file_of(*first)
            );
        }
        for (what, (n, samples)) in [
            ("unknown lines", ch.unknown()),
            ("lines with wrong labels, timestamp or metadata", ch.wrong()),
            ("duplicates no crash explains", ch.bad_duplicates()),
        ] {
            if n > 0 {
                let _ = writeln!(s, "{what}: {n}; first ones:");
                for x in samples {
                    let _ = writeln!(s, "  {x}");
                }
            }
        }
        let _ = writeln!(s, "runs (crashed = kill -9):");
        for (i, r) in ch.runs().iter().enumerate() {
            let end = r.ended.unwrap_or_else(Instant::now);
            let _ = writeln!(
                s,
                "  run {i}: up {:.1?}{}, at its end {:.1?} behind the writer (line {} not yet \
                 stored); {} of its lines sent again later",
                end - r.started,
                if r.crashed { ", crashed" } else { "" },
                end.saturating_duration_since(report.written_at(r.low_at_end)),
                r.low_at_end,
                ch.duplicates_from_crash(i)
            );
        }
        if let Ok(m) = try_metrics(self.w.port) {
            let _ = writeln!(s, "last run's counters:");
            for l in m.lines().filter(|l| {
                !l.starts_with('#')
                    && [
                        "ringtail_bytes_lost",
                        "ringtail_file_events",
                        "ringtail_lines_malformed",
                        "ringtail_positions_gaps",
                        "loki_write_dropped_entries",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
            }) {
                let _ = writeln!(s, "  {l}");
            }
        }
        let _ = writeln!(
            s,
            "warnings and errors of every run:\n{}",
            self.run_warnings(60)
        );
        s.push_str(&rt.logs());
        s
    }

    /// The `warn` and `error` lines of every run's stderr, at most `max`.
    fn run_warnings(&self, max: usize) -> String {
        let mut out = String::new();
        let mut n = 0;
        for run in 1..=self.w.runs {
            let path = self
                .w
                .dir
                .path()
                .join(format!("run{run}/ringtail-1.stderr.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for l in text
                .lines()
                .filter(|l| l.contains("level=warn") || l.contains("level=error"))
            {
                n += 1;
                if n <= max {
                    let _ = writeln!(out, "  run{run}: {l}");
                }
            }
        }
        if n > max {
            let _ = writeln!(out, "  [... {} more]", n - max);
        }
        out
    }
}

/// Every line arrived exactly as written, nothing else arrived, and every duplicate was sent
/// again by the run right after a crash.
fn assert_complete(b: &Bench, ch: &Checker, report: &GenReport, rt: &Ringtail) {
    let diag = || b.diagnose(ch, report, rt);
    assert_eq!(ch.distinct(), report.lines, "lines lost{}", diag());
    assert_eq!(ch.beyond(report.lines), 0, "lines never written{}", diag());
    assert_eq!(ch.unknown().0, 0, "unknown lines{}", diag());
    assert_eq!(ch.wrong().0, 0, "wrong labels/ts/metadata{}", diag());
    assert_eq!(ch.bad_duplicates().0, 0, "unexplained duplicates{}", diag());
}

/// ≥ 20 kill -9 at random points while up to 20 MB/s are written into 48 containers whose logs
/// kubelet rotates at 2 MiB and compresses; each restart on the same data dir. Nothing may be lost, and a crash may re-send only what it had not yet
/// recorded: lines stored shortly before it. The table printed shows, per crash, how far behind
/// the writer ringtail was, and what it sent again.
#[test]
fn kill_9_storm_while_writing_and_rotating_loses_nothing() {
    let _serial = serial();
    let cycles = if soak() { 200 } else { 20 };
    let mut rng = fastrand::Rng::with_seed(seed("kill -9 storm"));
    let containers = 48;
    let mut b = Bench::new(containers);
    let started = Instant::now();
    let stored = b.checker().progress();
    let gen = Generator::start_throttled(
        &b.w.pods(),
        GenConfig {
            containers,
            bytes_per_sec: 20_000_000,
            // 0.2 MB/s per container reaches it by each check (every check rotates every
            // container); where the pipeline is slower the throttled writer takes two or three
            // checks, and kubelet's compression waits as long, keeping ahead of a slow ringtail.
            max_size: 2 << 20,
            monitor: KUBELET_MONITOR,
            max_files: 5,
        },
        stored,
        MAX_AHEAD,
    );
    let mut rt = b.start();
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_millis(rng.u64(RUN_BEFORE_KILL_MS)));
        b.crash(&mut rt);
        std::thread::sleep(Duration::from_millis(rng.u64(0..500)));
        rt = b.start();
    }
    let report = gen.stop();
    // One more crash once writing has stopped: the last restart must still find its place.
    std::thread::sleep(Duration::from_millis(rng.u64(RUN_BEFORE_KILL_MS)));
    b.crash(&mut rt);
    rt = b.start();
    let arrived = b.wait_all(&report);
    // Before the checker's lock: the receiver takes its own lock, then the checker's.
    let answered = b.w.rx.answered();
    let ch = b.checker();
    assert!(
        arrived,
        "not everything arrived within {:?}{}",
        drain_timeout(&report),
        b.diagnose(&ch, &report, &rt)
    );
    assert_complete(&b, &ch, &report, &rt);
    assert!(
        report.rotations() >= containers && report.compressions() >= containers,
        "the storm must rotate and compress under the crashes{}",
        b.diagnose(&ch, &report, &rt)
    );

    // What is sent again after the crash of run r must be no more than the batches in flight
    // (contract §2), and come from pushes answered at most the slack before the kill.
    let per_batch = lines_per_batch();
    let bound = IN_FLIGHT_BATCHES * per_batch;
    let mut table = format!(
        "kill -9 ×{} over {:.1?}: {} lines ({:.0} MB at {:.1} MB/s, target 20, throttled \
         {:.1?}), {} rotations, {} compressed, {} duplicates\n  crash  behind    dups  oldest  \
         (bound {bound} = {IN_FLIGHT_BATCHES} batches × {per_batch} lines, answered within {PUSH_SLACK:?})\n",
        cycles + 1,
        started.elapsed(),
        report.lines,
        report.bytes as f64 / 1e6,
        report.mb_per_sec(),
        report.throttled,
        report.rotations(),
        report.compressions(),
        ch.duplicates()
    );
    let mut over = Vec::new();
    let crashes: Vec<usize> = (0..ch.runs().len())
        .filter(|&r| ch.runs()[r].crashed)
        .collect();
    assert_eq!(crashes.len(), cycles + 1);
    for &r in &crashes {
        let dups = ch.duplicates_from_crash(r);
        let oldest = ch.oldest_duplicate_from_crash(r, &answered);
        let run = &ch.runs()[r];
        let behind = run
            .ended
            .map(|end| end.saturating_duration_since(report.written_at(run.low_at_end)))
            .unwrap_or_default();
        let _ = writeln!(
            table,
            "  {r:>5}  {:>5.1}s  {dups:>6}  {:>5}ms",
            behind.as_secs_f64(),
            oldest.as_millis()
        );
        if dups > bound || oldest > PUSH_SLACK {
            over.push(r);
        }
    }
    let n = crashes.len() as u64;
    let _ = writeln!(
        table,
        "  duplicates per crash: mean {}, max {}",
        ch.duplicates() / n,
        crashes
            .iter()
            .map(|&r| ch.duplicates_from_crash(r))
            .max()
            .unwrap_or(0)
    );
    eprintln!("{table}");
    assert!(
        over.is_empty(),
        "crashes {over:?} re-sent more, or older lines, than the batches in flight\n\
         {table}{}",
        b.diagnose(&ch, &report, &rt)
    );
    drop(ch);
    stop(&mut rt);
}

/// 50 MB/s into twelve containers whose 10 MiB logs kubelet renames, reopens and compresses as
/// often as it may (every 3 s), for ten seconds with ringtail running throughout: every line
/// once, none from a `.gz`, and every rotation seen as a rename of a file already being read.
/// Nothing throttles the writer: ringtail falls far behind 50 MB/s here, and must still drain
/// every renamed, then compressed and deleted, file through the descriptor it holds.
/// Run with inotify's events (the default) and with every file polled.
fn kubelet_rotation_at_50_mb_per_s_loses_and_duplicates_nothing(tail: &str) {
    let _serial = serial();
    let secs = if soak() { 120 } else { 10 };
    let containers = 12;
    let mut b = Bench::new(containers);
    b.extra = tail.to_string();
    let mut rt = b.start();
    // 50 MB/s over twelve containers is ~12.5 MB per container between kubelet's checks: each
    // check rotates every container.
    let gen = Generator::start(
        &b.w.pods(),
        GenConfig {
            containers,
            bytes_per_sec: 50_000_000,
            max_size: 10 << 20,
            monitor: KUBELET_MIN_MONITOR,
            max_files: 5,
        },
    );
    std::thread::sleep(Duration::from_secs(secs));
    let report = gen.stop();
    let arrived = b.wait_all(&report);
    // Files compressed at the last rotations are let go two discovery scans after they vanish.
    let finished = || {
        metric_value(
            &metrics(b.w.port),
            "ringtail_file_events_total{event=\"finished\"}",
        )
        .unwrap_or(0.0) as usize
    };
    wait_until(Duration::from_secs(5), || {
        finished() >= report.compressions()
    });
    let m = metrics(b.w.port);
    let ch = b.checker();
    eprintln!(
        "rotation at {:.1} MB/s (target 50) for {:.1?}: {} lines, {:.0} MB, {} rotations, {} \
         compressed, {} duplicates",
        report.mb_per_sec(),
        report.elapsed,
        report.lines,
        report.bytes as f64 / 1e6,
        report.rotations(),
        report.compressions(),
        ch.duplicates()
    );
    assert!(
        arrived,
        "not everything arrived within {:?}{}",
        drain_timeout(&report),
        b.diagnose(&ch, &report, &rt)
    );
    assert_complete(&b, &ch, &report, &rt);
    assert_eq!(ch.duplicates(), 0, "no restart, so no duplicate{}", {
        b.diagnose(&ch, &report, &rt)
    });
    // kubelet's one worker gzips 12 files of ~12 MB per check: on two shared cores it does
    // not always get through the third check in time, so only the first two are certain.
    assert!(
        report.rotations() > containers && report.compressions() >= 1,
        "every container rotated, and a rotated file compressed{}",
        b.diagnose(&ch, &report, &rt)
    );
    let event = |e: &str| {
        metric_value(&m, &format!("ringtail_file_events_total{{event=\"{e}\"}}")).unwrap_or(0.0)
            as usize
    };
    let counters = || format!("\n{m}{}", b.diagnose(&ch, &report, &rt));
    // Each rotation: the old inode renamed (followed, not re-read), a fresh `0.log` new, and at
    // the next rotation the renamed file compressed and let go once read to its end.
    assert_eq!(event("renamed"), report.rotations(), "{}", counters());
    assert_eq!(
        event("new"),
        containers + report.rotations(),
        "{}",
        counters()
    );
    assert_eq!(event("finished"), report.compressions(), "{}", counters());
    assert_eq!(
        metric_value(&m, "ringtail_lines_malformed_total"),
        Some(0.0),
        "a .gz read as text would show as malformed lines{}",
        counters()
    );
    assert_eq!(
        metric_sum(&m, "ringtail_bytes_lost_total"),
        0.0,
        "{}",
        counters()
    );
    drop(ch);
    stop(&mut rt);
}

#[test]
fn kubelet_rotation_at_50_mb_per_s_loses_and_duplicates_nothing_with_inotify() {
    kubelet_rotation_at_50_mb_per_s_loses_and_duplicates_nothing("tail: { inotify: true }\n");
}

#[test]
fn kubelet_rotation_at_50_mb_per_s_loses_and_duplicates_nothing_polling() {
    kubelet_rotation_at_50_mb_per_s_loses_and_duplicates_nothing("tail: { inotify: false }\n");
}

/// SIGTERM while 20 MB/s are being written: exit 0 within the contract's deadline, and after
/// the restart every line arrives; a graceful stop commits what was acked, so nothing arrives
/// twice either.
#[test]
fn sigterm_under_load_exits_in_time_and_loses_nothing() {
    let _serial = serial();
    let stops = if soak() { 40 } else { 3 };
    let mut rng = fastrand::Rng::with_seed(seed("SIGTERM under load"));
    let containers = 4;
    let mut b = Bench::new(containers);
    let stored = b.checker().progress();
    let gen = Generator::start_throttled(
        &b.w.pods(),
        GenConfig {
            containers,
            bytes_per_sec: 20_000_000,
            max_size: 10 << 20,
            monitor: KUBELET_MONITOR,
            max_files: 5,
        },
        stored,
        MAX_AHEAD,
    );
    let mut rt = b.start();
    let mut took = Vec::new();
    for _ in 0..stops {
        // Three stops of 2.5 to 4.5 s span kubelet's first check at 10 s: a rotation.
        std::thread::sleep(Duration::from_millis(rng.u64(2500..4500)));
        took.push(b.stop(&mut rt));
        // Lines written while it is down are read after the restart.
        std::thread::sleep(Duration::from_millis(300));
        rt = b.start();
    }
    let report = gen.stop();
    let arrived = b.wait_all(&report);
    let ch = b.checker();
    eprintln!(
        "SIGTERM under load ×{stops}: exits took {took:?}; {} lines ({:.0} MB at {:.1} MB/s, \
         target 20, throttled {:.1?}), {} rotations, {} duplicates",
        report.lines,
        report.bytes as f64 / 1e6,
        report.mb_per_sec(),
        report.throttled,
        report.rotations(),
        ch.duplicates()
    );
    assert!(
        arrived,
        "not everything arrived within {:?}{}",
        drain_timeout(&report),
        b.diagnose(&ch, &report, &rt)
    );
    assert_complete(&b, &ch, &report, &rt);
    assert_eq!(
        ch.duplicates(),
        0,
        "a graceful stop commits what Loki acked{}",
        b.diagnose(&ch, &report, &rt)
    );
    drop(ch);
    b.stop(&mut rt);
}
