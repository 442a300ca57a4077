//! Pod logs end to end: the real `ringtail` binary on a kubelet-style tree, pushing to a
//! receiver that decodes exactly what Loki decodes. Every scenario checks every line, label set
//! and structured-metadata value it wrote.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// The rotation and identity scenarios run twice: with inotify's events (the default) and with
/// every file polled, as where inotify is unavailable. Both paths share one state machine.
const WITH_INOTIFY: &str = "tail: { inotify: true }\n";
const POLLING: &str = "tail: { inotify: false }\n";

fn labels(ns: &str, pod: &str, container: &str) -> BTreeMap<String, String> {
    [
        ("namespace", ns.to_string()),
        ("pod", pod.to_string()),
        ("container", container.to_string()),
        ("node", "test-node".to_string()),
        ("job", format!("{ns}/{container}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    map(pairs)
}

/// Writes `lines` to stdout of `log`, each expected with `labels` and `stream="stdout"`.
fn write_tagged(
    log: &mut ContainerLog,
    labels: &BTreeMap<String, String>,
    lines: impl Iterator<Item = String>,
    want: &mut Vec<Expected>,
) {
    for line in lines {
        let ts = log.write_line(Stream::Stdout, &line);
        want.push((labels.clone(), ts, line, meta(&[("stream", "stdout")])));
    }
}

fn wait_entries(rx: &LokiReceiver, n: usize, rt: &Ringtail) {
    if !rx.wait_for_entries(n, WAIT) {
        let mut by_tag: BTreeMap<String, usize> = BTreeMap::new();
        for l in rx.lines() {
            *by_tag
                .entry(l.split(' ').next().unwrap_or("").to_string())
                .or_default() += 1;
        }
        panic!(
            "only {} of {n} entries arrived; by first word: {by_tag:?}\n{}\n{}",
            rx.entry_count(),
            rx.summary(),
            rt.logs()
        );
    }
}

#[test]
fn many_pods_and_containers_arrive_with_exact_labels() {
    let mut w = World::new();
    let mut want = Vec::new();
    for p in 0..12 {
        let pod = w.pod("team-a", &format!("api-{p}"), &format!("uid-{p}"));
        for c in ["app", "sidecar", "init"] {
            let mut log = pod.container(c);
            for i in 0..40 {
                let stream = if i % 3 == 0 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                let line = format!("pod {p} container {c} line {i}");
                let ts = log.write_line(stream, &line);
                want.push((
                    labels("team-a", &format!("api-{p}"), c),
                    ts,
                    line,
                    meta(&[("stream", stream.as_str())]),
                ));
            }
        }
    }
    // A static pod: its directory carries the config hash where the UID would be.
    let mut apiserver = w
        .pod(
            "kube-system",
            "kube-apiserver-node-1",
            "5e7f3e2c9d0a4b1c8f6e2d3a4b5c6d7e",
        )
        .container("kube-apiserver");
    let static_line = "I1125 10:00:00.900000 1 server.go:155] Version";
    let ts = apiserver.write_line(Stream::Stderr, static_line);
    want.push((
        labels("kube-system", "kube-apiserver-node-1", "kube-apiserver"),
        ts,
        static_line.to_string(),
        meta(&[("stream", "stderr")]),
    ));
    let mut rt = w.start("");
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    // Headers as Loki's distributor expects them.
    let h = w.rx.headers_of_request(0);
    assert_eq!(
        h.get("content-type").map(String::as_str),
        Some("application/x-protobuf")
    );
    assert!(!h.contains_key("x-scope-orgid"));
    stop(&mut rt);
}

#[test]
fn partials_levels_trace_ids_limits_and_bad_bytes() {
    let mut w = World::new();
    let pod = w.pod("emojivoto", "web-1", "u-web");
    let mut log = pod.container("web");
    let l = labels("emojivoto", "web-1", "web");
    let mut want: Vec<Expected> = Vec::new();
    let mut push = |ts: i64, line: &str, m: &[(&str, &str)]| {
        want.push((l.clone(), ts, line.to_string(), meta(m)));
    };

    // A 100 KiB line, split by containerd at 16 KiB into P records and a final F.
    let long: String = (0..100 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let stamps = log.write_line_records(Stream::Stdout, &long);
    assert_eq!(stamps.len(), 7, "100 KiB at 16 KiB per record");
    push(stamps[0], &long, &[("stream", "stdout")]);

    // A partial line interleaved with the other stream.
    let p1 = log.write_partial(Stream::Stdout, "first half, ");
    let e = log.write_line(Stream::Stderr, "stderr in between");
    push(e, "stderr in between", &[("stream", "stderr")]);
    log.write_line(Stream::Stdout, "second half");
    push(p1, "first half, second half", &[("stream", "stdout")]);

    // JSON levels, normalised.
    for (raw, norm) in [
        ("WARNING", "warn"),
        ("err", "error"),
        ("Info", "info"),
        ("fatal", "critical"),
        ("trace", "trace"),
    ] {
        let line = format!(r#"{{"level":"{raw}","msg":"m"}}"#);
        let ts = log.write_line(Stream::Stdout, &line);
        push(ts, &line, &[("stream", "stdout"), ("level", norm)]);
    }
    // Trace IDs: W3C, B3, and a JSON field.
    let tp = "[2026-11-25T10:00:00.000Z] \"GET /api HTTP/1.1\" 200 map[TRACEPARENT:[00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01]]";
    let ts = log.write_line(Stream::Stdout, tp);
    push(
        ts,
        tp,
        &[
            ("stream", "stdout"),
            ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ],
    );
    let b3 = "map[X-B3-Traceid:[e457b5a2e4d86bd1] X-B3-Spanid:[e457b5a2e4d86bd1]]";
    let ts = log.write_line(Stream::Stdout, b3);
    push(
        ts,
        b3,
        &[("stream", "stdout"), ("trace_id", "e457b5a2e4d86bd1")],
    );
    let js = r#"{"level":"debug","msg":"x","traceId":"80F198EE56343BA864FE8B2A57D3EFF7"}"#;
    let ts = log.write_line(Stream::Stdout, js);
    push(
        ts,
        js,
        &[
            ("stream", "stdout"),
            ("level", "debug"),
            ("trace_id", "80f198ee56343ba864fe8b2a57d3eff7"),
        ],
    );
    let zero = "Traceparent:[00-00000000000000000000000000000000-00f067aa0ba902b7-01]";
    let ts = log.write_line(Stream::Stdout, zero);
    push(ts, zero, &[("stream", "stdout")]);

    // Invalid UTF-8 is repaired, not a batch-killer.
    let ts = Clock::START_NS + 999_000_000_000;
    log.write_record(ts, Stream::Stdout, "F", b"bad \xff\xfe bytes");
    push(ts, "bad \u{FFFD}\u{FFFD} bytes", &[("stream", "stdout")]);

    // A 300 KiB line is cut to max_line_size and marked.
    let huge = "z".repeat(300 * 1024);
    let ts = log.write_line(Stream::Stderr, &huge);
    push(
        ts,
        &huge[..262_144],
        &[("stream", "stderr"), ("truncated", "true")],
    );

    // Several tags after P/F are accepted.
    let ts = Clock::START_NS + 1_000_000_000_000;
    log.write_record(ts, Stream::Stdout, "F:x:y", b"tagged");
    push(ts, "tagged", &[("stream", "stdout")]);

    let mut rt = w.start("");
    // A line that is not a CRI record is sent raw with the time it was read.
    log.write_raw(b"this is not a CRI record\n");
    wait_entries(&w.rx, want.len() + 1, &rt);
    let mut received = got(&w.rx);
    let malformed = received
        .iter()
        .position(|e| e.2 == "this is not a CRI record")
        .expect("malformed line sent");
    let (ml, mts, _, mm) = received.remove(malformed);
    assert_eq!(ml, l);
    assert!(mm.is_empty());
    let now = support::cri::unix_now_ns();
    assert!(
        (now - mts).abs() < 60_000_000_000,
        "read time, not a CRI time: {mts}"
    );
    received.sort();
    want.sort();
    assert_eq!(received.len(), want.len());
    for (g, e) in received.iter().zip(&want) {
        assert_eq!(g, e);
    }
    let m = metrics(w.port);
    assert_eq!(
        metric_value(&m, "ringtail_lines_malformed_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "ringtail_lines_truncated_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "ringtail_lines_repaired_total"),
        Some(1.0),
        "{m}"
    );
    stop(&mut rt);
}

fn rotation_by_rename_restart_files_and_deletion_lose_nothing(tail: &str) {
    let mut w = World::new();
    let pod = w.pod("ns", "busy", "u-busy");
    let mut log = pod.container("c");
    let l = labels("ns", "busy", "c");
    let mut want: Vec<Expected> = Vec::new();
    let write = |log: &mut ContainerLog, n: usize, tag: &str, want: &mut Vec<Expected>| {
        let lines = (0..n).map(|i| format!("{tag} {i} {}", "x".repeat(i % 200)));
        write_tagged(log, &l, lines, want);
    };
    write(&mut log, 300, "before", &mut want);
    let mut rt = w.start(tail);
    for round in 0..4 {
        write(&mut log, 200, &format!("r{round}-a"), &mut want);
        // kubelet: rename, containerd keeps writing to the old inode until it reopens.
        log.compress_rotated();
        log.rotate_rename();
        write(&mut log, 50, &format!("r{round}-late"), &mut want);
        log.reopen();
        write(&mut log, 200, &format!("r{round}-b"), &mut want);
        // kubelet compresses a rotated file at its next rotation, at least one
        // containerLogMonitorInterval (10 s by default) later; here a little over two scans.
        std::thread::sleep(Duration::from_millis(1200));
    }
    assert!(
        log.rotated_files()
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".gz")),
        "the scenario compressed old rotations"
    );
    // The container restarts: 1.log.
    log.restart();
    write(&mut log, 100, "restarted", &mut want);
    // A container whose file is deleted right after a burst: once ringtail has it open, the
    // rest is drained through the open descriptor.
    let mut gone = pod.container("gone");
    let gl = labels("ns", "busy", "gone");
    let ts = gone.write_line(Stream::Stdout, "gone first");
    want.push((
        gl.clone(),
        ts,
        "gone first".to_string(),
        meta(&[("stream", "stdout")]),
    ));
    assert!(wait_until(WAIT, || w
        .rx
        .lines()
        .iter()
        .any(|l| l == "gone first")));
    for i in 0..500 {
        let line = format!("gone {i}");
        let ts = gone.write_line(Stream::Stdout, &line);
        want.push((gl.clone(), ts, line, meta(&[("stream", "stdout")])));
    }
    gone.remove_all();
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(800));
    assert_exactly(&w.rx, &want);
    std::thread::sleep(Duration::from_millis(1500));
    let m = metrics(w.port);
    assert!(
        metric_value(&m, "ringtail_file_events_total{event=\"finished\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn rotation_by_rename_restart_files_and_deletion_lose_nothing_with_inotify() {
    rotation_by_rename_restart_files_and_deletion_lose_nothing(WITH_INOTIFY);
}

#[test]
fn rotation_by_rename_restart_files_and_deletion_lose_nothing_polling() {
    rotation_by_rename_restart_files_and_deletion_lose_nothing(POLLING);
}

fn rotation_while_down_and_restart_resend_nothing_and_lose_nothing(tail: &str) {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u-p");
    let mut log = pod.container("c");
    let l = labels("ns", "p", "c");
    let mut want: Vec<Expected> = Vec::new();
    let write = |log: &mut ContainerLog, n: usize, tag: &str, want: &mut Vec<Expected>| {
        write_tagged(log, &l, (0..n).map(|i| format!("{tag} {i}")), want);
    };
    write(&mut log, 500, "first", &mut want);
    let mut rt = w.start(tail);
    wait_entries(&w.rx, 500, &rt);
    stop(&mut rt);
    let positions =
        std::fs::read_to_string(w.data().join("positions.json")).expect("positions written");
    assert!(positions.contains("\"version\":\"1\""), "{positions}");

    // While ringtail is down: more lines, a rotation, more lines, another rotation. kubelet's
    // second rotation compresses the first rotated file, so "down-a" survives only in a .gz:
    // ringtail finds it beside the live file, and ships what it holds after the position.
    write(&mut log, 100, "down-a", &mut want);
    let first_rotated = log.rotate();
    write(&mut log, 100, "down-b", &mut want);
    log.rotate();
    write(&mut log, 100, "down-c", &mut want);
    assert!(
        !first_rotated.exists(),
        "kubelet compressed the first rotation"
    );
    let mut rt = w.start(tail);
    wait_entries(&w.rx, 800, &rt);
    w.rx.wait_quiet(Duration::from_millis(800));
    let want_now = want.clone();
    assert_exactly(&w.rx, &want_now);
    let m = metrics(w.port);
    assert_eq!(
        metric_value(&m, "ringtail_recovered_lines_total"),
        Some(100.0),
        "{m}"
    );
    for event in ["compressed_found", "compressed_drained"] {
        let series = format!("ringtail_file_events_total{{event=\"{event}\"}}");
        assert_eq!(metric_value(&m, &series), Some(1.0), "{series}\n{m}");
    }
    let logs = rt.stderr_text();
    assert!(!logs.contains("is gone"), "{}", rt.logs());
    assert!(
        logs.contains(&format!(
            "was compressed into {}.gz while ringtail was down",
            first_rotated.display()
        )),
        "{}",
        rt.logs()
    );

    // Rotated once while down: the renamed file is still on disk and is read to its end. The
    // drained .gz is not read again (the exact check would show its lines twice).
    stop(&mut rt);
    write(&mut log, 100, "down-d", &mut want);
    log.rotate();
    write(&mut log, 100, "down-e", &mut want);
    let mut rt = w.start(tail);
    wait_entries(&w.rx, 1000, &rt);
    w.rx.wait_quiet(Duration::from_millis(800));
    let want_now = want.clone();
    assert_exactly(&w.rx, &want_now);
    stop(&mut rt);
}

/// A pod directory deleted and made again under the same name (a static pod recreated), then
/// its log deleted and replaced under the same name: each new file is read from its first
/// byte, with the same labels, and nothing of the old ones is sent twice.
fn a_recreated_directory_and_a_replaced_file_are_read_from_the_start(tail: &str) {
    let mut w = World::new();
    let pod = w.pod("ns", "static", "u-static");
    let l = labels("ns", "static", "c");
    let mut want: Vec<Expected> = Vec::new();
    let mut log = pod.container("c");
    write_tagged(
        &mut log,
        &l,
        (0..100).map(|i| format!("first {i}")),
        &mut want,
    );
    let mut rt = w.start(tail);
    wait_entries(&w.rx, want.len(), &rt);

    pod.remove();
    std::thread::sleep(Duration::from_millis(1200));
    let mut log = pod.container("c");
    let lines = (0..50).map(|i| format!("recreated {i} {}", "y".repeat(i % 80)));
    write_tagged(&mut log, &l, lines, &mut want);
    wait_entries(&w.rx, want.len(), &rt);

    fs::remove_file(log.current_path()).expect("remove 0.log");
    std::thread::sleep(Duration::from_millis(1200));
    let mut log = pod.container("c");
    // Longer than the file it replaces, so that reading it at the old offset would lose lines.
    let lines = (0..300).map(|i| format!("replaced {i} {}", "z".repeat(i % 120)));
    write_tagged(&mut log, &l, lines, &mut want);
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(800));
    assert_exactly(&w.rx, &want);
    stop(&mut rt);
}

#[test]
fn a_recreated_directory_and_a_replaced_file_are_read_from_the_start_with_inotify() {
    a_recreated_directory_and_a_replaced_file_are_read_from_the_start(WITH_INOTIFY);
}

#[test]
fn a_recreated_directory_and_a_replaced_file_are_read_from_the_start_polling() {
    a_recreated_directory_and_a_replaced_file_are_read_from_the_start(POLLING);
}

#[test]
fn rotation_while_down_and_restart_resend_nothing_and_lose_nothing_with_inotify() {
    rotation_while_down_and_restart_resend_nothing_and_lose_nothing(WITH_INOTIFY);
}

#[test]
fn rotation_while_down_and_restart_resend_nothing_and_lose_nothing_polling() {
    rotation_while_down_and_restart_resend_nothing_and_lose_nothing(POLLING);
}

/// kubelet's sequence during a rolling update of a busy pod, with crashes: ringtail is killed
/// (-9) while the container writes; kubelet rotates twice while it is down, so what ringtail had
/// not read is only in a `.gz`; ringtail starts again, and is killed halfway through that `.gz`.
/// Every line arrives, the duplicates are at most the batches in flight at each kill, and a
/// drained `.gz` is not read again.
fn a_gz_made_while_down_is_recovered_across_kills_and_never_read_twice(tail: &str) {
    const IN_FLIGHT: usize = 4;
    let mut w = World::new();
    let pod = w.pod("ns", "busy", "u-busy");
    let mut log = pod.container("c");
    let mut other = pod.container("other");
    let cfg = w
        .config_with_loki(&format!(
            "max_in_flight: {IN_FLIGHT}\n  min_in_flight: {IN_FLIGHT}\n"
        ))
        .replace("max_bytes: 1MiB", "max_bytes: 64KiB")
        + tail;
    let mut want: HashMap<String, usize> = HashMap::new();
    let mut write = |log: &mut ContainerLog, n: usize, tag: &str| {
        for i in 0..n {
            let line = format!("{tag} {i:06} {}", "x".repeat(i % 50));
            log.write_line(Stream::Stdout, &line);
            want.insert(line, 0);
        }
    };
    write(&mut log, 2000, "first");
    let mut rt = w.start_config(&cfg);
    for round in 0..3 {
        write(&mut log, 1000, &format!("running-{round}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.kill9();
    let mut kills = 1;

    write(&mut log, 30_000, "down-a");
    let first_rotation = log.rotate();
    write(&mut log, 100, "down-b");
    write(&mut other, 500, "other");
    log.rotate();
    write(&mut log, 100, "down-c");
    let gz = std::path::PathBuf::from(format!("{}.gz", first_rotation.display()));
    assert!(
        gz.exists() && !first_rotation.exists(),
        "kubelet compressed it"
    );

    // Slow answers, so that the kill lands in the middle of the .gz.
    w.rx.set_delay(Duration::from_millis(100));
    let mut rt = w.start_config(&cfg);
    let down_a = |rx: &LokiReceiver| {
        rx.lines()
            .iter()
            .filter(|l| l.starts_with("down-a"))
            .count()
    };
    assert!(wait_until(WAIT, || down_a(&w.rx) >= 5000), "{}", rt.logs());
    rt.kill9();
    kills += 1;
    assert!(
        down_a(&w.rx) < 30_000,
        "the kill came after the .gz was drained: the scenario needs more lines in it"
    );
    let positions = committed_positions(&w.data()).expect("positions written");
    assert!(
        positions.files.iter().any(|f| f.path == gz),
        "the .gz stands for the file it holds: {:?}",
        positions.files
    );

    w.rx.set_delay(Duration::ZERO);
    let mut rt = w.start_config(&cfg);
    let unique = |rx: &LokiReceiver| {
        rx.lines()
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert!(
        wait_until(WAIT, || unique(&w.rx) >= want.len()),
        "{} of {} lines\n{}",
        unique(&w.rx),
        want.len(),
        rt.logs()
    );
    w.rx.wait_quiet(Duration::from_millis(800));
    let logs = rt.stderr_text();
    assert!(
        logs.contains(&format!("was compressed into {}", gz.display())),
        "{}",
        rt.logs()
    );
    assert!(!logs.contains("is gone"), "{}", rt.logs());

    // The drained .gz is let go: a restart ships nothing more.
    stop(&mut rt);
    let before = w.rx.entry_count();
    let mut rt = w.start_config(&cfg);
    w.rx.wait_quiet(Duration::from_millis(1500));
    assert_eq!(w.rx.entry_count(), before, "{}", rt.logs());
    stop(&mut rt);

    let mut duplicates = 0;
    for line in w.rx.lines() {
        match want.get_mut(&line) {
            Some(n) => {
                *n += 1;
                duplicates += usize::from(*n > 1);
            }
            None => panic!("unexpected line {line:?}"),
        }
    }
    let lost: Vec<_> = want.iter().filter(|(_, n)| **n == 0).take(5).collect();
    assert!(lost.is_empty(), "lost (first 5): {lost:?}");
    // Each kill may catch the batches being pushed, and one more whose position write was put
    // off (see tests/reliability.rs).
    let per_batch = w.rx.log().iter().map(|r| r.entries).max().unwrap_or(0);
    let bound = kills * (IN_FLIGHT + 1) * per_batch;
    eprintln!(
        "{} lines, {duplicates} duplicates over {kills} kills (bound {bound})",
        want.len()
    );
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
}

#[test]
fn a_gz_made_while_down_is_recovered_across_kills_and_never_read_twice_with_inotify() {
    a_gz_made_while_down_is_recovered_across_kills_and_never_read_twice(WITH_INOTIFY);
}

#[test]
fn a_gz_made_while_down_is_recovered_across_kills_and_never_read_twice_polling() {
    a_gz_made_while_down_is_recovered_across_kills_and_never_read_twice(POLLING);
}

/// The corners of recovering `.gz` files: one damaged halfway (what precedes the damage
/// arrives, and it is logged and counted), one that is no tracked file's continuation (never
/// read), and a gone file whose rotations kubelet deleted too (logged as lost). The rest of the
/// node goes on.
#[test]
fn damaged_foreign_and_missing_gz_files_are_told_apart() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u-p");
    let mut want: Vec<Expected> = Vec::new();
    let mut logs: Vec<ContainerLog> = ["damaged", "steady", "foreign", "deleted"]
        .iter()
        .map(|c| pod.container(c))
        .collect();
    let write = |log: &mut ContainerLog, n: usize, tag: &str, want: &mut Vec<Expected>| {
        let l = labels("ns", "p", log.name());
        let name = log.name().to_string();
        write_tagged(
            log,
            &l,
            (0..n).map(|i| format!("{name} {tag} {i:05}")),
            want,
        );
    };
    for log in logs.iter_mut() {
        write(log, 200, "first", &mut want);
    }
    let mut rt = w.start("");
    wait_entries(&w.rx, want.len(), &rt);
    stop(&mut rt);

    let [damaged, steady, foreign, deleted] = &mut logs[..] else {
        unreachable!()
    };
    // Damaged: its first rotation, compressed at the second, is cut in half.
    let mut damaged_down = Vec::new();
    write(damaged, 5000, "down", &mut damaged_down);
    let gz_of = |p: std::path::PathBuf| std::path::PathBuf::from(format!("{}.gz", p.display()));
    let damaged_gz = gz_of(damaged.rotate());
    write(damaged, 100, "later", &mut want);
    damaged.rotate();
    let bytes = fs::read(&damaged_gz).unwrap();
    fs::write(&damaged_gz, &bytes[..bytes.len() / 2]).unwrap();
    // Steady: not rotated, so its position is found and nothing beside it is looked at.
    write(steady, 100, "down", &mut want);
    // Foreign: rotated twice (recovered), with a .gz of other content beside it.
    write(foreign, 100, "down", &mut want);
    foreign.rotate();
    write(foreign, 100, "later", &mut want);
    foreign.rotate();
    let stranger = foreign.dir().join("0.log.20200101-000000");
    fs::write(
        &stranger,
        "2020-01-01T00:00:00Z stdout F not ours\n".repeat(50),
    )
    .unwrap();
    assert!(std::process::Command::new("gzip")
        .arg(&stranger)
        .status()
        .unwrap()
        .success());
    // Deleted: rotated twice, then its .gz deleted (kubelet's containerLogMaxFiles).
    write(deleted, 100, "down", &mut Vec::new());
    let deleted_gz = gz_of(deleted.rotate());
    write(deleted, 100, "later", &mut want);
    deleted.rotate();
    fs::remove_file(&deleted_gz).unwrap();

    let mut rt = w.start("");
    let min = want.len() + 1;
    wait_entries(&w.rx, min, &rt);
    w.rx.wait_quiet(Duration::from_millis(1000));
    // What precedes the damage, in order and whole: a prefix of the file's lines.
    let shipped =
        w.rx.lines()
            .iter()
            .filter(|l| l.starts_with("damaged down"))
            .count();
    assert!(
        shipped > 0 && shipped < 5000,
        "{shipped} lines before the damage"
    );
    want.extend(damaged_down.into_iter().take(shipped));
    assert_exactly(&w.rx, &want);
    let m = metrics(w.port);
    let event = |e: &str| {
        metric_value(&m, &format!("ringtail_file_events_total{{event=\"{e}\"}}")).unwrap_or(0.0)
    };
    assert_eq!(event("compressed_found"), 2.0, "{m}");
    assert_eq!(event("compressed_drained"), 1.0, "{m}");
    assert_eq!(event("compressed_corrupt"), 1.0, "{m}");
    assert_eq!(event("gone_while_down"), 1.0, "{m}");
    assert_eq!(
        metric_value(&m, "ringtail_recovered_lines_total"),
        Some((shipped + 100) as f64),
        "{m}"
    );
    let text = rt.stderr_text();
    assert!(
        text.contains(&format!("{} is a damaged gzip", damaged_gz.display())),
        "{}",
        rt.logs()
    );
    assert!(
        text.contains(&format!(
            "{} (read up to byte",
            deleted.dir().join("0.log").display()
        )) && text.contains("no compressed copy of it is beside it"),
        "{}",
        rt.logs()
    );
    stop(&mut rt);
}

/// With inotify, a new pod's file and a quiet file's next line are shipped on their events:
/// the safety rescan is an hour away, so nothing else could find them in time.
#[test]
fn with_inotify_new_files_and_writes_are_shipped_without_the_rescan() {
    let mut w = World::new();
    let pod = w.pod("ns", "quiet", "u-q");
    let mut log = pod.container("c");
    let mut want: Vec<Expected> = Vec::new();
    write_tagged(
        &mut log,
        &labels("ns", "quiet", "c"),
        (0..10).map(|i| format!("before {i}")),
        &mut want,
    );
    let mut rt = w.start("tail: { inotify: true, rescan: 1h }\n");
    wait_entries(&w.rx, 10, &rt);
    // Quiet for longer than any polling pause, then one line.
    std::thread::sleep(Duration::from_millis(600));
    let start = Instant::now();
    write_tagged(
        &mut log,
        &labels("ns", "quiet", "c"),
        ["after the pause".to_string()].into_iter(),
        &mut want,
    );
    wait_entries(&w.rx, 11, &rt);
    let written = start.elapsed();
    // A pod that appears while ringtail runs.
    let start = Instant::now();
    let new_pod = w.pod("ns", "fresh", "u-f");
    let mut fresh = new_pod.container("app");
    write_tagged(
        &mut fresh,
        &labels("ns", "fresh", "app"),
        ["first line of a new pod".to_string()].into_iter(),
        &mut want,
    );
    wait_entries(&w.rx, 12, &rt);
    let created = start.elapsed();
    eprintln!("write to receiver: {written:?}; new pod's first line: {created:?}");
    assert!(
        written < Duration::from_secs(5) && created < Duration::from_secs(5),
        "{written:?} {created:?}"
    );
    w.rx.wait_quiet(Duration::from_millis(300));
    assert_exactly(&w.rx, &want);
    let m = metrics(w.port);
    assert!(
        metric_value(&m, "ringtail_inotify_watches").unwrap_or(0.0) >= 5.0,
        "root, 2 pods, 2 containers\n{m}"
    );
    assert_eq!(metric_value(&m, "ringtail_files_polled"), Some(0.0), "{m}");
    stop(&mut rt);
}

/// The kernel's inotify queue limit, lowered while a ringtail creates its inotify instance (the
/// limit is taken when the instance is made), and put back when dropped.
struct SmallInotifyQueue(String);

const MAX_QUEUED: &str = "/proc/sys/fs/inotify/max_queued_events";

impl SmallInotifyQueue {
    fn set(events: u32) -> SmallInotifyQueue {
        let was = std::fs::read_to_string(MAX_QUEUED)
            .unwrap_or_else(|e| panic!("read {MAX_QUEUED}: {e}"));
        std::fs::write(MAX_QUEUED, events.to_string()).unwrap_or_else(|e| {
            panic!("write {MAX_QUEUED} (the suite runs as root, as on CI): {e}")
        });
        SmallInotifyQueue(was)
    }
}

impl Drop for SmallInotifyQueue {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_QUEUED, self.0.trim());
    }
}

/// inotify's queue overflows (8 events for a burst of thousands): the full scan that follows
/// finds every write and a container made meanwhile, with the safety rescan an hour away.
/// Nothing is lost and nothing is shipped twice.
#[test]
fn an_inotify_queue_overflow_rescans_and_loses_and_duplicates_nothing() {
    let mut w = World::new();
    let pod = w.pod("ns", "busy", "u-b");
    let mut logs: Vec<ContainerLog> = (0..6).map(|c| pod.container(&format!("c{c}"))).collect();
    let mut want: Vec<Expected> = Vec::new();
    let write = |logs: &mut Vec<ContainerLog>, tag: &str, want: &mut Vec<Expected>| {
        // Line by line across the files: no two events in a row are alike, so the kernel
        // cannot merge them.
        for i in 0..300 {
            for log in logs.iter_mut() {
                let l = labels("ns", "busy", log.name());
                let line = format!("{} {tag} {i}", log.name());
                write_tagged(log, &l, std::iter::once(line), want);
            }
        }
    };
    write(&mut logs, "before", &mut want);
    let mut rt = {
        let _small = SmallInotifyQueue::set(8);
        w.start("tail: { inotify: true, rescan: 1h }\n")
    };
    wait_entries(&w.rx, want.len(), &rt);
    write(&mut logs, "during", &mut want);
    logs.push(pod.container("late"));
    write(&mut logs, "after", &mut want);
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    let m = metrics(w.port);
    assert!(
        metric_value(&m, "ringtail_inotify_overflows_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        rt.stderr_text()
            .contains("inotify's event queue overflowed"),
        "{}",
        rt.logs()
    );
    stop(&mut rt);
}

/// Past `tail.max_watches`, directories go without a watch: their files are polled, every line
/// still arrives, and the metric and one warning say how many.
#[test]
fn past_the_watch_cap_files_are_polled_and_every_line_arrives() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u-p");
    let mut logs: Vec<ContainerLog> = (0..6).map(|c| pod.container(&format!("c{c}"))).collect();
    let mut want: Vec<Expected> = Vec::new();
    let write = |logs: &mut Vec<ContainerLog>, tag: &str, want: &mut Vec<Expected>| {
        for log in logs.iter_mut() {
            let l = labels("ns", "p", log.name());
            let name = log.name().to_string();
            write_tagged(log, &l, (0..50).map(|i| format!("{name} {tag} {i}")), want);
        }
    };
    write(&mut logs, "before", &mut want);
    // The root, the pod and two of the six containers.
    let mut rt = w.start("tail: { inotify: true, rescan: 1h, max_watches: 4 }\n");
    wait_entries(&w.rx, want.len(), &rt);
    write(&mut logs, "after", &mut want);
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    let m = metrics(w.port);
    assert_eq!(
        metric_value(&m, "ringtail_inotify_watches"),
        Some(4.0),
        "{m}"
    );
    assert_eq!(metric_value(&m, "ringtail_files_polled"), Some(4.0), "{m}");
    let text = rt.stderr_text();
    assert_eq!(
        text.matches("no inotify watch for").count(),
        1,
        "{}",
        rt.logs()
    );
    assert!(
        text.contains("tail.max_watches is reached"),
        "{}",
        rt.logs()
    );
    stop(&mut rt);
}

#[test]
fn kill_9_and_restart_loses_nothing_and_bounds_duplicates() {
    let mut w = World::new();
    let pod = w.pod("ns", "crashy", "u-c");
    let mut logs: Vec<ContainerLog> = (0..4).map(|c| pod.container(&format!("c{c}"))).collect();
    let mut want: HashMap<String, usize> = HashMap::new();
    let mut seq = 0usize;
    let mut write_some =
        |logs: &mut Vec<ContainerLog>, n: usize, want: &mut HashMap<String, usize>| {
            for _ in 0..n {
                let c = seq % logs.len();
                let line = format!("seq {seq:08} {}", "p".repeat(seq % 97));
                logs[c].write_line(Stream::Stdout, &line);
                want.insert(line, 0);
                seq += 1;
            }
        };
    let mut kills = Vec::new();
    let mut rt = w.start("");
    for cycle in 0..6 {
        for _ in 0..10 {
            write_some(&mut logs, 300, &mut want);
            std::thread::sleep(Duration::from_millis(40 + 15 * cycle as u64));
        }
        if cycle % 2 == 1 {
            logs[cycle % 4].rotate();
        }
        rt.kill9();
        kills.push(Instant::now());
        write_some(&mut logs, 500, &mut want);
        rt = w.start("");
    }
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(1000));
    let entries = w.rx.entries();
    let mut first_seen: HashMap<&str, Instant> = HashMap::new();
    let mut duplicates = 0;
    for e in &entries {
        match want.get_mut(e.line.as_str()) {
            Some(n) => {
                *n += 1;
                if *n > 1 {
                    duplicates += 1;
                    // A duplicate must have first arrived shortly before a kill: acked but its
                    // position not yet written (positions are written every second), or in flight.
                    let first = first_seen[e.line.as_str()];
                    assert!(
                        kills.iter().any(|k| *k >= first
                            && k.duration_since(first) <= Duration::from_millis(2500)),
                        "duplicate {:?} first arrived long before any kill",
                        e.line
                    );
                } else {
                    first_seen.insert(&e.line, e.at);
                }
            }
            None => panic!("unexpected line {:?}", e.line),
        }
    }
    let lost: Vec<_> = want
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(l, _)| l)
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "lost lines (first 5): {lost:?}\n{}",
        rt.logs()
    );
    eprintln!(
        "kill -9 x{}: {} lines, {duplicates} duplicates",
        kills.len(),
        want.len()
    );
    stop(&mut rt);
}

#[test]
fn loki_500_for_5_seconds_then_204_loses_nothing() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut log = pod.container("c");
    let mut want = Vec::new();
    for i in 0..400 {
        let line = format!("during outage {i}");
        let ts = log.write_line(Stream::Stdout, &line);
        want.push((
            labels("ns", "p", "c"),
            ts,
            line,
            meta(&[("stream", "stdout")]),
        ));
    }
    w.rx.fail_for(Duration::from_secs(5), 500);
    let started = Instant::now();
    let mut rt = w.start("");
    wait_entries(&w.rx, want.len(), &rt);
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "nothing can be stored while Loki fails"
    );
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    let m = metrics(w.port);
    assert!(w.rx.count_status(500) >= 2, "{}", w.rx.summary());
    let host = format!("127.0.0.1:{}", w.rx.port());
    let retries = metric_value(
        &m,
        &format!("loki_write_batch_retries_total{{host=\"{host}\",tenant=\"\"}}"),
    );
    assert!(retries.unwrap_or(0.0) >= 2.0, "{m}");
    assert_eq!(
        metric_value(
            &m,
            &format!("loki_write_sent_entries_total{{host=\"{host}\",tenant=\"\"}}")
        ),
        Some(want.len() as f64),
        "{m}"
    );
    assert!(m.contains("status_code=\"500\""), "{m}");
    stop(&mut rt);
}

#[test]
fn a_400_is_a_counted_drop_and_delivery_goes_on() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut log = pod.container("c");
    for i in 0..100 {
        log.write_line(Stream::Stdout, format!("first batch {i}"));
    }
    w.rx.set_responses(vec![400]);
    let mut rt = w.start("");
    assert!(w.rx.wait_for_requests(1, WAIT));
    let first = &w.rx.log()[0];
    assert_eq!(first.status, 400);
    let dropped = first.entries;
    assert!(dropped > 0);
    for i in 0..50 {
        log.write_line(Stream::Stdout, format!("after {i}"));
    }
    wait_entries(&w.rx, 150 - dropped, &rt);
    std::thread::sleep(Duration::from_millis(300));
    let host = format!("127.0.0.1:{}", w.rx.port());
    let m = metrics(w.port);
    assert_eq!(
        metric_value(
            &m,
            &format!("loki_write_dropped_entries_total{{host=\"{host}\",tenant=\"\",reason=\"ingester_error\"}}")
        ),
        Some(dropped as f64),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, &format!("loki_write_dropped_entries_total{{host=\"{host}\",tenant=\"\",reason=\"rate_limited\"}}")),
        Some(0.0)
    );
    assert!(
        rt.stderr_text().contains("rejected a batch"),
        "{}",
        rt.logs()
    );
    // Dropped on purpose means committed: a restart does not send them again.
    stop(&mut rt);
    let before = w.rx.entry_count();
    let mut rt = w.start("");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(w.rx.entry_count(), before, "{}", rt.logs());
    stop(&mut rt);
}

/// Loki's partial acceptance: it stores the valid entries of a push and answers 400 for the
/// invalid ones. ringtail does not send the batch again (the stored ones are in, the others
/// would fail again) and counts the drop under Loki's reason: `line_too_long` here.
#[test]
fn a_partial_400_keeps_the_valid_entries_and_counts_its_reason() {
    let mut w = World::new();
    w.rx.set_limits(Limits {
        max_line_size: 2048,
        ..Limits::default()
    });
    let pod = w.pod("ns", "p", "u");
    let mut log = pod.container("c");
    let l = labels("ns", "p", "c");
    let mut want = Vec::new();
    for i in 0..20 {
        let line = if i % 5 == 0 {
            format!("{i} {}", "x".repeat(4000))
        } else {
            format!("short {i}")
        };
        let ts = log.write_line(Stream::Stdout, &line);
        if i % 5 != 0 {
            want.push((l.clone(), ts, line, meta(&[("stream", "stdout")])));
        }
    }
    let mut rt = w.start("");
    wait_entries(&w.rx, 16, &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    let statuses = w.rx.status_counts();
    assert_eq!(
        statuses.get(&400).copied().unwrap_or(0),
        w.rx.requests(),
        "{statuses:?}"
    );
    let host = format!("127.0.0.1:{}", w.rx.port());
    let m = metrics(w.port);
    let dropped = |reason: &str| {
        metric_value(
            &m,
            &format!("loki_write_dropped_entries_total{{host=\"{host}\",tenant=\"\",reason=\"{reason}\"}}"),
        )
    };
    // Alloy's accounting: the whole batch of a 400 counts as dropped (Loki does not say how
    // many it kept).
    assert_eq!(dropped("line_too_long"), Some(20.0), "{m}");
    assert_eq!(dropped("ingester_error"), Some(0.0), "{m}");
    assert!(rt.stderr_text().contains("Max entry size"), "{}", rt.logs());
    stop(&mut rt);
}

/// A size limit on the way (nginx's `client_max_body_size`, Loki's `max_recv_msg_size`): a 413
/// is answered by sending the batch again in halves, split again while refused; nothing is lost
/// and nothing is sent twice.
#[test]
fn a_413_splits_the_batch_until_it_fits() {
    let mut w = World::new();
    w.rx.set_limits(Limits {
        max_body: 24 << 10,
        ..Limits::default()
    });
    let pod = w.pod("ns", "p", "u");
    let mut want = Vec::new();
    // Many files in one lane (max_in_flight: 1), so that one batch holds them all.
    let mut logs: Vec<_> = (0..16).map(|i| pod.container(&format!("c{i}"))).collect();
    for (i, log) in logs.iter_mut().enumerate() {
        let l = labels("ns", "p", &format!("c{i}"));
        for j in 0..100 {
            // Incompressible enough that 16 files' worth is well over 24 KiB compressed.
            let line = format!(
                "{i}-{j} {:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            );
            let ts = log.write_line(Stream::Stdout, &line);
            want.push((l.clone(), ts, line, meta(&[("stream", "stdout")])));
        }
    }
    let cfg = w.config_with_loki("max_in_flight: 1\n");
    let mut rt = w.start_config(&cfg);
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    assert!(rt.stderr_text().contains("two halves"), "{}", rt.logs());
    let m = metrics(w.port);
    let host = format!("127.0.0.1:{}", w.rx.port());
    let refused = metric_value(
        &m,
        &format!(
            "loki_write_request_duration_seconds_count{{status_code=\"413\",host=\"{host}\",tenant=\"\"}}"
        ),
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{m}");
    assert_eq!(
        metric_sum(&m, "loki_write_dropped_entries_total"),
        0.0,
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn a_corrupt_positions_file_is_set_aside_not_fatal() {
    let mut w = World::new();
    std::fs::create_dir_all(w.data()).unwrap();
    std::fs::write(w.data().join("positions.json"), vec![0u8; 4096]).unwrap();
    let pod = w.pod("ns", "p", "u");
    let mut log = pod.container("c");
    let mut want = Vec::new();
    for i in 0..20 {
        let line = format!("line {i}");
        let ts = log.write_line(Stream::Stdout, &line);
        want.push((
            labels("ns", "p", "c"),
            ts,
            line,
            meta(&[("stream", "stdout")]),
        ));
    }
    let mut rt = w.start("");
    wait_entries(&w.rx, want.len(), &rt);
    assert_exactly(&w.rx, &want);
    assert!(
        rt.stderr_text().contains("positions file was corrupt"),
        "{}",
        rt.logs()
    );
    let aside: Vec<_> = std::fs::read_dir(w.data())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("positions.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0u8; 4096]);
    stop(&mut rt);
    let text = std::fs::read_to_string(w.data().join("positions.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid positions after restart");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(1));
}

fn run_tree_with_io(io: &str) -> Vec<Expected> {
    let mut w = World::new();
    let mut n = 0;
    for p in 0..5 {
        let pod = w.pod("io", &format!("p{p}"), &format!("u{p}"));
        let mut log = pod.container("c");
        for i in 0..200 {
            let line = if i % 10 == 0 {
                "L".repeat(20_000 + i)
            } else if i % 3 == 0 {
                format!(
                    r#"{{"level":"warn","msg":"{i}","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}}"#
                )
            } else {
                format!("plain {p} {i}")
            };
            log.write_line(
                if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                &line,
            );
            n += 1;
        }
    }
    let mut rt = w.start(&format!("tail:\n  io: {io}\n"));
    wait_entries(&w.rx, n, &rt);
    let m = metrics(w.port);
    assert_eq!(
        metric_value(&m, &format!("ringtail_io_mode{{mode=\"{io}\"}}")),
        Some(1.0),
        "{m}"
    );
    stop(&mut rt);
    let mut g = got(&w.rx);
    g.sort();
    g
}

#[test]
fn io_uring_and_forced_pread_give_identical_output() {
    let pread = run_tree_with_io("pread");
    let uring = run_tree_with_io("io_uring");
    assert_eq!(pread.len(), 1000);
    assert!(pread == uring, "the two read paths disagree");
}

#[test]
fn sigterm_exits_zero_quickly_even_while_loki_is_down() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut log = pod.container("c");
    for i in 0..10 {
        log.write_line(Stream::Stdout, format!("{i}"));
    }
    w.rx.set_default(503);
    let mut rt = w.start("");
    assert!(w.rx.wait_for_requests(1, WAIT));
    let t = Instant::now();
    rt.sigterm();
    let status = rt.wait_exit(Duration::from_secs(12));
    assert!(
        status.is_some_and(|s| s.success()),
        "{:?}\n{}",
        status,
        rt.logs()
    );
    assert!(
        t.elapsed() <= Duration::from_secs(11),
        "took {:?}",
        t.elapsed()
    );
    // Nothing was acked, so nothing was committed: all ten come after Loki recovers.
    w.rx.set_default(204);
    let mut rt = w.start("");
    wait_entries(&w.rx, 10, &rt);
    stop(&mut rt);
}

#[test]
fn stdout_sink_writes_the_contract_json() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut log = pod.container("c");
    let ts = log.write_line(Stream::Stderr, r#"{"level":"ERROR","msg":"boom"}"#);
    let cfg = w
        .config("")
        .replace(&format!("url: \"{}\"", w.rx.url()), "url: \"\"");
    assert!(cfg.contains("url: \"\""), "{cfg}");
    let mut rt = w.start_config(&cfg);
    assert!(
        wait_until(WAIT, || rt.stdout_text().lines().count() >= 1),
        "{}",
        rt.logs()
    );
    stop(&mut rt);
    let lines = rt.stdout_json();
    assert_eq!(lines.len(), 1);
    let expected = serde_json::json!({
        "labels": {"namespace": "ns", "pod": "p", "container": "c", "node": "test-node", "job": "ns/c"},
        "ts": format_rfc3339nano(ts, 0),
        "line": r#"{"level":"ERROR","msg":"boom"}"#,
        "metadata": {"stream": "stderr", "level": "error"},
    });
    assert_eq!(lines[0], expected);
    assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(w.rx.requests(), 0);
}

#[test]
fn probes_and_metrics_endpoint() {
    let mut w = World::new();
    w.pod("ns", "p", "u")
        .container("c")
        .write_line(Stream::Stdout, "one");
    let mut rt = w.start("");
    wait_entries(&w.rx, 1, &rt);
    assert_eq!(support::http::get(w.port, "/ready").unwrap().status, 200);
    assert_eq!(support::http::get(w.port, "/healthy").unwrap().status, 200);
    assert_eq!(
        support::http::get(w.port, "/etc/passwd").unwrap().status,
        404
    );
    let m = metrics(w.port);
    for name in [
        "loki_write_sent_bytes_total",
        "loki_write_dropped_bytes_total",
        "loki_write_sent_entries_total",
        "loki_write_dropped_entries_total",
        "loki_write_request_duration_seconds",
        "loki_process_duration_seconds",
        "ringtail_read_bytes_total",
        "ringtail_read_lines_total",
        "ringtail_files_tracked",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    for reason in [
        "ingester_error",
        "rate_limited",
        "stream_limited",
        "line_too_long",
        "queue_is_full",
    ] {
        assert!(m.contains(&format!("reason=\"{reason}\"")), "{reason}");
    }
    stop(&mut rt);
}

/// Contract §4's per-source gauges and counters: files and streams tracked, the read lag
/// (bytes on disk not yet acked) while Loki is down and after it is back, and positions commits.
#[test]
fn per_source_files_streams_lag_and_commits() {
    let mut w = World::new();
    w.rx.set_default(503);
    let pod = w.pod("ns", "p", "u");
    let (mut a, mut b) = (pod.container("a"), pod.container("b"));
    let mut rt = w.start("");
    for i in 0..50 {
        a.write_line(Stream::Stdout, format!("line a {i}"));
        b.write_line(Stream::Stderr, format!("line b {i}"));
    }
    let on_disk = (a.size() + b.size()) as f64;
    let m = || metrics(w.port);
    let lag = |m: &str| metric_value(m, "ringtail_read_lag_bytes{source=\"pods\"}");
    assert!(
        wait_until(WAIT, || lag(&m()) == Some(on_disk)),
        "lag {:?}, on disk {on_disk}\n{}",
        lag(&m()),
        m()
    );
    let now = m();
    assert_eq!(
        metric_value(&now, "ringtail_files_tracked{source=\"pods\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&now, "ringtail_streams_tracked{source=\"pods\"}"),
        Some(2.0)
    );
    w.rx.set_default(204);
    wait_entries(&w.rx, 100, &rt);
    assert!(
        wait_until(WAIT, || lag(&m()) == Some(0.0)),
        "lag after Loki is back: {:?}",
        lag(&m())
    );
    let commits = metric_value(&m(), "ringtail_positions_commits_total{source=\"pods\"}");
    assert!(commits.is_some_and(|c| c >= 2.0), "{commits:?}");
    stop(&mut rt);
}

fn truncation_starts_again_at_zero(tail: &str) {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut log = pod.container("c");
    let l = labels("ns", "p", "c");
    let mut want = Vec::new();
    for i in 0..100 {
        let line = format!("before truncation {i}");
        let ts = log.write_line(Stream::Stdout, &line);
        want.push((l.clone(), ts, line, meta(&[("stream", "stdout")])));
    }
    let mut rt = w.start(tail);
    wait_entries(&w.rx, 100, &rt);
    log.truncate();
    std::thread::sleep(Duration::from_millis(1200));
    for i in 0..10 {
        let line = format!("after truncation {i}");
        let ts = log.write_line(Stream::Stdout, &line);
        want.push((l.clone(), ts, line, meta(&[("stream", "stdout")])));
    }
    wait_entries(&w.rx, 110, &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    let m = metrics(w.port);
    assert_eq!(
        metric_value(&m, "ringtail_file_events_total{event=\"truncated\"}"),
        Some(1.0),
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn truncation_starts_again_at_zero_with_inotify() {
    truncation_starts_again_at_zero(WITH_INOTIFY);
}

#[test]
fn truncation_starts_again_at_zero_polling() {
    truncation_starts_again_at_zero(POLLING);
}

#[test]
fn check_config_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "loki:\n  batch:\n    max_wait: soon\n").unwrap();
    let out = run_cli(
        &["check-config", bad.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("line 3") && out.stderr.contains("loki.batch.max_wait"),
        "{}",
        out.stderr
    );

    let seed = dir.path().join("dev.yaml");
    std::fs::write(
        &seed,
        "alloy:\n  namespace: alloy\n  loki:\n    url: \"http://loki.example:3100/loki/api/v1/push\"\n  logs:\n    journal:\n      enabled: false\n",
    )
    .unwrap();
    let out = run_cli(
        &["check-config", seed.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out:?}");
    let effective: serde_yaml_value::Value = serde_yaml_value::parse(&out.stdout);
    assert_eq!(
        effective.get("loki.url"),
        Some("http://loki.example:3100/loki/api/v1/push")
    );
    assert_eq!(effective.get("logs.journal.enabled"), Some("false"));
    assert_eq!(effective.get("node_name"), Some("test-node"));

    let out = run_cli(&["version"], Duration::from_secs(10));
    let want = format!("ringtail {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(out.stdout, want, "{out:?}");
    for flag in ["--version", "-V"] {
        let out = run_cli(&[flag], Duration::from_secs(10));
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(0),
            "{flag}: {out:?}"
        );
        assert_eq!(out.stdout, want, "{flag}: {out:?}");
    }
    let missing = dir.path().join("nope.yaml");
    let out = run_cli(
        &["run", "--config", missing.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(2));
    assert!(out.stderr.contains("nope.yaml"), "{}", out.stderr);
}

/// docs/configuration.md names every key `check-config` prints (the effective config: all keys).
#[test]
fn the_configuration_doc_names_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    fs::write(&cfg, "node_name: n\nlogs: { rke2: { timezone: UTC } }\n").unwrap();
    let out = run_cli(
        &["check-config", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out:?}");
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"))
            .expect("docs/configuration.md");
    let missing: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim_start().split_once(':').map(|(k, _)| k))
        .filter(|k| !doc.contains(&format!("{k}:")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:?}"
    );
}

/// A tiny reader of the YAML that `check-config` prints (nested maps of scalars), so the test
/// does not depend on a YAML crate being a dev-dependency.
mod serde_yaml_value {
    use std::collections::HashMap;

    pub struct Value(HashMap<String, String>);

    impl Value {
        pub fn get(&self, dotted: &str) -> Option<&str> {
            self.0.get(dotted).map(String::as_str)
        }
    }

    pub fn parse(text: &str) -> Value {
        let mut out = HashMap::new();
        let mut stack: Vec<(usize, String)> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let Some((k, v)) = trimmed.split_once(':') else {
                continue;
            };
            let mut path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            path.push(k.trim());
            let v = v.trim().trim_matches('\'').trim_matches('"');
            if v.is_empty() {
                stack.push((indent, k.trim().to_string()));
            } else {
                out.insert(path.join("."), v.to_string());
            }
        }
        Value(out)
    }
}

#[test]
fn open_files_are_capped_and_reopened_by_identity() {
    let mut w = World::new();
    let mut logs: Vec<ContainerLog> = (0..40)
        .map(|i| {
            w.pod("many", &format!("p{i}"), &format!("u{i}"))
                .container("c")
        })
        .collect();
    let mut want = Vec::new();
    let write_round = |logs: &mut Vec<ContainerLog>, round: usize, want: &mut Vec<Expected>| {
        for (i, log) in logs.iter_mut().enumerate() {
            let line = format!("round {round} file {i}");
            let ts = log.write_line(Stream::Stdout, &line);
            want.push((
                labels("many", &format!("p{i}"), "c"),
                ts,
                line,
                meta(&[("stream", "stdout")]),
            ));
        }
    };
    write_round(&mut logs, 0, &mut want);
    let mut rt = w.start("tail:\n  threads: 2\n  max_open_files: 16\n");
    wait_entries(&w.rx, want.len(), &rt);
    for round in 1..4 {
        std::thread::sleep(Duration::from_millis(700));
        write_round(&mut logs, round, &mut want);
        wait_entries(&w.rx, want.len(), &rt);
        let m = metrics(w.port);
        let open = metric_value(&m, "ringtail_files_open").unwrap_or(f64::MAX);
        assert!(open <= 16.0, "{open} files open, cap 16\n{m}");
    }
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    let m = metrics(w.port);
    assert!(
        metric_value(&m, "ringtail_file_events_total{event=\"closed_lru\"}").unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "ringtail_files_tracked{source=\"pods\"}"),
        Some(40.0)
    );
    stop(&mut rt);
}

#[test]
fn tenant_and_auth_headers_come_from_config_and_files() {
    let mut w = World::new();
    w.pod("ns", "p", "u")
        .container("c")
        .write_line(Stream::Stdout, "one");
    let token = w.dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let cfg = w.config_with_loki(&format!(
        "tenant_id: team-a\n  bearer_token_file: {}\n",
        token.display()
    ));
    let mut rt = w.start_config(&cfg);
    wait_entries(&w.rx, 1, &rt);
    let h = w.rx.headers_of_request(0);
    assert_eq!(h.get("x-scope-orgid").map(String::as_str), Some("team-a"));
    assert_eq!(
        h.get("authorization").map(String::as_str),
        Some("Bearer s3cret-token")
    );
    let m = metrics(w.port);
    assert!(m.contains("tenant=\"team-a\""), "{m}");
    assert!(!m.contains("s3cret") && !rt.stderr_text().contains("s3cret"));
    stop(&mut rt);

    // Basic auth, the password read from its file.
    let mut w2 = World::new();
    w2.pod("ns", "p", "u")
        .container("c")
        .write_line(Stream::Stdout, "two");
    let pw = w2.dir.path().join("pw");
    std::fs::write(&pw, "hunter2").unwrap();
    let cfg = w2.config_with_loki(&format!(
        "basic_auth: {{ username: ringtail, password_file: {} }}\n",
        pw.display()
    ));
    let mut rt = w2.start_config(&cfg);
    wait_entries(&w2.rx, 1, &rt);
    // base64("ringtail:hunter2")
    assert_eq!(
        w2.rx
            .headers_of_request(0)
            .get("authorization")
            .map(String::as_str),
        Some("Basic cmluZ3RhaWw6aHVudGVyMg==")
    );
    let cfg_file = w2.dir.path().join("basic.yaml");
    std::fs::write(&cfg_file, &cfg).unwrap();
    let out = run_cli(
        &["check-config", cfg_file.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(
        !out.stdout.contains("hunter2"),
        "check-config prints the file path, never the secret"
    );
    stop(&mut rt);
}

#[test]
fn a_quiet_node_flushes_at_once_instead_of_waiting_for_max_wait() {
    let mut w = World::new();
    let mut log = w.pod("ns", "p", "u").container("c");
    let cfg = w.config("").replace("max_wait: 200ms", "max_wait: 30s");
    assert!(cfg.contains("max_wait: 30s"));
    let mut rt = w.start_config(&cfg);
    for i in 0..5 {
        let t = Instant::now();
        log.write_line(Stream::Stdout, format!("quiet {i}"));
        wait_entries(&w.rx, i + 1, &rt);
        // Discovery or the idle re-check sees it within ~0.5 s; far below max_wait.
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }
    stop(&mut rt);
}

#[test]
fn a_last_line_without_newline_is_shipped() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut quiet = pod.container("quiet");
    let mut gone = pod.container("gone");
    // containerd writes output that ends without a newline as a P record, with no F after it.
    let ts_quiet = quiet.write_partial(Stream::Stdout, "last words");
    let mut rt = w.start("");
    let ts_gone = gone.write_partial(Stream::Stderr, "exit status 1");
    assert!(wait_until(WAIT, || w.rx.entry_count() >= 1 || gone.size() == 0));
    gone.remove_all();
    wait_entries(&w.rx, 2, &rt);
    let want = vec![
        (
            labels("ns", "p", "quiet"),
            ts_quiet,
            "last words".to_string(),
            meta(&[("stream", "stdout")]),
        ),
        (
            labels("ns", "p", "gone"),
            ts_gone,
            "exit status 1".to_string(),
            meta(&[("stream", "stderr")]),
        ),
    ];
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&w.rx, &want);
    stop(&mut rt);
}

#[test]
fn a_busy_file_is_not_taken_for_truncated() {
    let mut w = World::new();
    let mut log = w.pod("ns", "busy", "u").container("c");
    let mut rt = w.start("");
    let mut n = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for _ in 0..30 {
            log.write_line(Stream::Stdout, format!("busy {n}"));
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_entries(&w.rx, n, &rt);
    w.rx.wait_quiet(Duration::from_millis(800));
    assert_eq!(w.rx.entry_count(), n, "no line twice");
    let m = metrics(w.port);
    assert_eq!(
        metric_value(&m, "ringtail_file_events_total{event=\"truncated\"}"),
        None,
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn an_unterminated_tail_does_not_spin() {
    let mut w = World::new();
    let mut log = w.pod("ns", "p", "u").container("c");
    log.write_line(Stream::Stdout, "complete");
    log.write_raw(b"2024-11-25T10:00:00Z stdout F torn record with no newline \0\0\0");
    let mut rt = w.start("");
    wait_entries(&w.rx, 1, &rt);
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let before = cpu(rt.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu(rt.pid()) - before;
    assert!(used < 0.5, "{used} CPU-seconds in 2 s of idling");
    stop(&mut rt);
}

#[test]
fn read_from_end_applies_to_a_first_install_only() {
    let mut w = World::new();
    let pod = w.pod("ns", "p", "u");
    let mut old = pod.container("old");
    old.write_line(Stream::Stdout, "before the first install");
    let end_cfg = w
        .config("")
        .replace("read_from: beginning", "read_from: end");
    assert!(end_cfg.contains("read_from: end"));
    let mut rt = w.start_config(&end_cfg);
    // A line written after the start is read; the one before it is not.
    std::thread::sleep(Duration::from_millis(700));
    let ts = old.write_line(Stream::Stdout, "after start");
    wait_entries(&w.rx, 1, &rt);
    stop(&mut rt);
    // A container created while ringtail was down: all of it is unread, so all of it is sent.
    let mut new = pod.container("new");
    let ts_new = new.write_line(Stream::Stdout, "written while down");
    let mut rt = w.start_config(&end_cfg);
    wait_entries(&w.rx, 2, &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(
        &w.rx,
        &[
            (
                labels("ns", "p", "old"),
                ts,
                "after start".to_string(),
                meta(&[("stream", "stdout")]),
            ),
            (
                labels("ns", "p", "new"),
                ts_new,
                "written while down".to_string(),
                meta(&[("stream", "stdout")]),
            ),
        ],
    );
    stop(&mut rt);
}
