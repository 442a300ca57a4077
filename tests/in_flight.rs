//! Delivery at a distance: several pushes in flight to a Loki that takes its time, each
//! stream still in order, positions only over what was acked, and one backoff (with
//! `Retry-After`) for the whole writer (src/sink/mod.rs, src/sink/concurrency.rs).
//! Real binary, real HTTP receiver; every line is accounted for.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;

/// `loki.max_in_flight` in these scenarios: lanes and the limit's ceiling.
const LANES: usize = 8;

fn labels(container: &str) -> BTreeMap<String, String> {
    map(&[
        ("namespace", "ns"),
        ("pod", "p"),
        ("container", container),
        ("node", "test-node"),
        ("job", &format!("ns/{container}")),
    ])
}

/// The test config with `loki.max_in_flight` and small batches, so that each container's
/// lines take several pushes.
fn config(w: &World, max_bytes: &str) -> String {
    let cfg = w.config_with_loki(&format!("max_in_flight: {LANES}\n"));
    assert!(cfg.contains("max_bytes: 1MiB"), "{cfg}");
    cfg.replace("max_bytes: 1MiB", &format!("max_bytes: {max_bytes}"))
}

/// `n` numbered lines on stdout of each container, as expected at Loki.
fn write(logs: &mut [ContainerLog], n: usize, from: usize) -> Vec<Expected> {
    let mut want = Vec::new();
    for log in logs.iter_mut() {
        let name = log.name().to_string();
        for i in from..from + n {
            let line = format!("{name} line {i:05} {}", "x".repeat(80));
            let ts = log.write_line(Stream::Stdout, &line);
            want.push((labels(&name), ts, line, map(&[("stream", "stdout")])));
        }
    }
    want
}

/// Waits until `want.len()` entries are stored, then asserts they are exactly `want`, each
/// stream in order.
fn arrive_exactly_in_order(rx: &LokiReceiver, want: &[Expected], rt: &Ringtail) {
    assert!(
        rx.wait_for_entries(want.len(), Duration::from_secs(60)),
        "{}\n{}",
        rx.summary(),
        rt.logs()
    );
    rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(rx, want);
    assert_each_stream_in_order(rx);
}

/// Each stream's entries, in the order the receiver processed the requests that carried them,
/// have rising timestamps (what a Loki with `unordered_writes: false` requires).
fn assert_each_stream_in_order(rx: &LokiReceiver) {
    let mut last: BTreeMap<String, (i64, usize)> = BTreeMap::new();
    for e in rx.entries() {
        let key = format!("{:?}", e.labels);
        if let Some((ts, batch)) = last.get(&key) {
            assert!(
                e.ts_ns > *ts,
                "{key}: entry at {} (request {}) after one at {ts} (request {batch})",
                e.ts_ns,
                e.batch
            );
        }
        last.insert(key, (e.ts_ns, e.batch));
    }
}

/// Loki answers every push after 100 ms. Pushes overlap (the adaptive limit grows past one),
/// every stream arrives in order, and a SIGTERM with pushes in flight drains them and commits
/// their positions: after a restart nothing is sent twice and nothing is missing.
#[test]
fn pushes_overlap_against_a_slow_loki_in_order_and_drain_on_sigterm() {
    let mut w = World::new();
    w.rx.set_delay(Duration::from_millis(100));
    let pod = w.pod("ns", "p", "u");
    let mut logs: Vec<_> = (0..12).map(|i| pod.container(&format!("c{i}"))).collect();
    let mut want = write(&mut logs, 400, 0);
    let cfg = config(&w, "8KiB");
    let mut rt = w.start_config(&cfg);
    assert!(
        w.rx.wait_for_entries(want.len() / 3, Duration::from_secs(60)),
        "{}\n{}",
        w.rx.summary(),
        rt.logs()
    );
    let m = metrics(w.port);
    let limit = metric_value(&m, "ringtail_loki_in_flight_limit").unwrap_or(0.0);
    // Stopped with pushes in flight: they are waited for, then the positions are written.
    stop(&mut rt);
    eprintln!(
        "stored by the time of the exit: {} of {}",
        w.rx.entry_count(),
        want.len()
    );
    want.extend(write(&mut logs, 50, 400));
    let mut rt = w.start_config(&cfg);
    arrive_exactly_in_order(&w.rx, &want, &rt);
    let overlap = w.rx.max_in_flight();
    eprintln!("most pushes at once: {overlap}; limit after a third: {limit}");
    assert!(
        (3..=LANES).contains(&overlap),
        "{overlap}\n{}",
        w.rx.summary()
    );
    assert!(limit >= 2.0, "{m}");
    stop(&mut rt);
}

/// One container's pushes fail (500) while the others' succeed: the others arrive and their
/// positions advance; the failing one's are held back. After a kill -9 and a Loki that takes
/// everything again, the held-back lines arrive and none of the acked ones is sent again.
#[test]
fn a_failing_batch_holds_back_only_its_lane_across_a_kill_9() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut logs: Vec<_> = ["a", "c0", "c1", "c2", "c3", "c4", "c5"]
        .iter()
        .map(|n| pod.container(n))
        .collect();
    let lane = |log: &ContainerLog| ringtail::sink::lane_of_file(&log.current_path(), LANES);
    let failing_lane = lane(&logs[0]);
    let others: Vec<String> = logs
        .iter()
        .filter(|l| lane(l) != failing_lane)
        .map(|l| l.name().to_string())
        .collect();
    assert!(others.len() >= 2, "containers all hash to one lane");
    w.rx.fail_label(Some(("container", "a", 500)));
    let want = write(&mut logs, 300, 0);
    let cfg = config(&w, "8KiB");
    let mut rt = w.start_config(&cfg);
    let arrived = |rx: &LokiReceiver| {
        rx.entries()
            .iter()
            .filter(|e| others.iter().any(|o| e.label("container") == Some(o)))
            .count()
    };
    // Which lane pushes first is not defined: wait for the others' lines and for a's 500.
    assert!(
        wait_until(Duration::from_secs(60), || arrived(&w.rx)
            == others.len() * 300
            && w.rx.count_status(500) > 0),
        "{} of {} lines of the other lanes, {} answers of 500\n{}\n{}",
        arrived(&w.rx),
        others.len() * 300,
        w.rx.count_status(500),
        w.rx.summary(),
        rt.logs()
    );
    assert!(
        w.rx.entries()
            .iter()
            .all(|e| e.label("container") != Some("a")),
        "a failing push was stored"
    );
    // Positions are written right after each ack; give the last one a moment, then crash.
    std::thread::sleep(Duration::from_millis(500));
    rt.kill9();
    w.rx.fail_label(None);
    let mut rt = w.start_config(&cfg);
    // Exactly once: what was acked before the crash is not sent again.
    arrive_exactly_in_order(&w.rx, &want, &rt);
    stop(&mut rt);
}

/// A 429 with `Retry-After: 1` holds every lane for a second, though the configured backoff
/// would retry after 100–200 ms (a longer `Retry-After` is capped at `max_backoff`, 1 s in the
/// test config); then everything arrives, once.
#[test]
fn a_429_with_retry_after_holds_every_lane() {
    let mut w = World::new();
    w.rx.set_delay(Duration::from_millis(50));
    w.rx.set_retry_after(Some("1"));
    let pod = w.pod("ns", "p", "u");
    let mut logs: Vec<_> = (0..12).map(|i| pod.container(&format!("c{i}"))).collect();
    let mut want = write(&mut logs, 100, 0);
    let cfg = config(&w, "8KiB");
    let mut rt = w.start_config(&cfg);
    assert!(
        w.rx.wait_for_entries(want.len(), Duration::from_secs(60)),
        "{}\n{}",
        w.rx.summary(),
        rt.logs()
    );
    // Lines in every container, then one 429: every lane must wait for Retry-After.
    w.rx.set_responses(vec![429]);
    want.extend(write(&mut logs, 300, 100));
    arrive_exactly_in_order(&w.rx, &want, &rt);
    let log = w.rx.log();
    let t429 = log
        .iter()
        .find(|r| r.status == 429)
        .map(|r| r.at)
        .expect("a 429 was answered");
    // Requests under way when the 429 went out (answered 50 ms later) may still arrive just
    // after it; any later one waits for the second.
    let in_flight_then = t429 + Duration::from_millis(300);
    let next = log
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > in_flight_then)
        .min()
        .expect("requests after the 429");
    let gap = next.duration_since(t429);
    eprintln!("429 with Retry-After: 1 → next push after {gap:?}");
    assert!(
        gap >= Duration::from_millis(950),
        "{gap:?}\n{}",
        w.rx.summary()
    );
    let m = metrics(w.port);
    let host = format!("127.0.0.1:{}", w.rx.port());
    assert_eq!(
        metric_value(
            &m,
            &format!("loki_write_batch_retries_total{{host=\"{host}\",tenant=\"\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    stop(&mut rt);
}
