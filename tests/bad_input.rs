//! Bad input in the log tree and in the journal directory. Each scenario puts one kind of bad
//! input beside a healthy container whose numbered lines must all arrive exactly once (the proof
//! that ringtail keeps shipping the other files), checks the exact count of the metric an
//! operator would look at, and ends with ringtail still running, `/healthy` answering 200 and a
//! clean SIGTERM: no input may crash it (a panic exits 101, see `run.rs`), hang it, or make its
//! memory grow with the size of the input.
//!
//! Covered elsewhere and not repeated here: invalid UTF-8 inside a record, a line that is not a
//! CRI record, and a 300 KiB line that containerd split into `P` records (`tests/pods.rs`,
//! `partials_levels_trace_ids_limits_and_bad_bytes`); a torn record with NULs at the end of a file
//! (`an_unterminated_tail_does_not_spin`); a corrupt positions file
//! (`a_corrupt_positions_file_is_set_aside_not_fatal`); truncation in place
//! (`truncation_starts_again_at_zero`); a journal directory that does not exist yet
//! (`tests/journal.rs`).

mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use support::cri::unix_now_ns;
use support::journal::{realtime_now_us, with_journal, JournalDir, JournalEntry};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// `loki.max_line_size`'s default: the longest line sent.
const MAX_LINE: usize = 256 << 10;
/// The timestamp [`assert_received`] expects for a line that is not a CRI record: ringtail stamps
/// those with the time it read them.
const READ_TIME: i64 = 0;
/// `nobody`/`nogroup` on Debian: the unprivileged user of the permission scenario.
const NOBODY: u32 = 65534;

/// Pod `name` of namespace `bad`.
fn pod(w: &World, name: &str) -> PodDir {
    w.pod("bad", name, &format!("u-{name}"))
}

/// The stream labels of container `container` of pod `pod` in namespace `bad`.
fn labels(pod: &str, container: &str) -> BTreeMap<String, String> {
    map(&[
        ("namespace", "bad"),
        ("pod", pod),
        ("container", container),
        ("node", "test-node"),
        ("job", &format!("bad/{container}")),
    ])
}

/// The structured metadata of a record's line: its stream, nothing else.
fn stream(s: Stream) -> BTreeMap<String, String> {
    map(&[("stream", s.as_str())])
}

/// The container beside every bad input: numbered lines, each expected exactly once.
struct Healthy {
    log: ContainerLog,
    next: usize,
    want: Vec<Expected>,
}

impl Healthy {
    fn new(w: &World) -> Healthy {
        Healthy {
            log: pod(w, "healthy").container("app"),
            next: 0,
            want: Vec::new(),
        }
    }

    /// Writes `n` more numbered lines.
    fn write(&mut self, n: usize) {
        for _ in 0..n {
            let line = format!("healthy line {:04}", self.next);
            let ts = self.log.write_line(Stream::Stdout, &line);
            self.want
                .push((labels("healthy", "app"), ts, line, stream(Stream::Stdout)));
            self.next += 1;
        }
    }
}

/// Waits until `n` entries are stored, or fails with what did arrive.
fn wait_entries(rx: &LokiReceiver, n: usize, rt: &Ringtail) {
    if !rx.wait_for_entries(n, WAIT) {
        let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
        for e in rx.entries() {
            *by_pod
                .entry(e.label("pod").unwrap_or("-").to_string())
                .or_default() += 1;
        }
        panic!(
            "only {} of {n} entries arrived; by pod: {by_pod:?}\n{}\n{}",
            rx.entry_count(),
            rx.summary(),
            rt.logs()
        );
    }
}

/// Asserts the receiver holds exactly `want` (as multisets). An entry of `want` stamped
/// [`READ_TIME`] is a line that is not a CRI record: it must carry a time between `since_ns`
/// (when the scenario began) and now. The CRI clock of the scenarios is in 2023.
fn assert_received(rx: &LokiReceiver, since_ns: i64, want: &[Expected]) {
    let now = unix_now_ns();
    let got: Vec<Expected> = got(rx)
        .into_iter()
        .map(|(l, ts, line, m)| {
            let ts = if (since_ns..=now).contains(&ts) {
                READ_TIME
            } else {
                ts
            };
            (l, ts, line, m)
        })
        .collect();
    assert_entries(got, want);
}

/// Asserts each series has exactly its value; `None`: the series does not exist.
fn assert_metrics(m: &str, want: &[(&str, Option<f64>)]) {
    let wrong: Vec<String> = want
        .iter()
        .filter_map(|(series, v)| {
            let got = metric_value(m, series);
            (got != *v).then(|| format!("{series}: {got:?}, expected {v:?}"))
        })
        .collect();
    let ours: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("ringtail_") && !l.starts_with("ringtail_kube"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{}\n---- ringtail_* series ----\n{}",
        wrong.join("\n"),
        ours.join("\n")
    );
}

/// Still running, never logged a panic, and the liveness probe answers 200.
fn assert_alive(port: u16, rt: &mut Ringtail) {
    assert!(
        rt.is_running(),
        "ringtail exited: {:?}\n{}",
        rt.try_status(),
        rt.logs()
    );
    assert!(!rt.stderr_text().contains("panicked"), "{}", rt.logs());
    let healthy = support::http::get(port, "/healthy").expect("GET /healthy");
    assert_eq!(healthy.status, 200, "{}", healthy.text());
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// `n` bytes of a seeded splitmix64 stream: the same garbage on every run and every machine.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// NUL is valid UTF-8: inside a record it is data and goes through untouched (not repaired,
/// not counted). A block of zeros where a crash lost data (ext4's delayed allocation) runs into
/// the next record and makes one line that is not a record, sent raw and counted malformed. A
/// file of random bytes is lines that are not records, repaired where they are not UTF-8; the
/// bytes after its last newline wait for one, as any line being written does.
#[test]
fn nul_bytes_and_a_file_of_random_bytes_are_counted_and_shipped_raw() {
    let since = unix_now_ns();
    let mut w = World::new();
    let mut healthy = Healthy::new(&w);
    healthy.write(50);
    let mut want = Vec::new();

    let mut nul = pod(&w, "nul").container("c");
    let with_nul = "before\0after\0\0end";
    let ts = nul.write_line(Stream::Stdout, with_nul);
    want.push((
        labels("nul", "c"),
        ts,
        with_nul.to_string(),
        stream(Stream::Stdout),
    ));
    nul.write_raw(&[0u8; 4096]);
    let hidden = nul.clock().next();
    nul.write_record(hidden, Stream::Stdout, "F", b"after the zeros");
    let glued = format!(
        "{}{} stdout F after the zeros",
        "\0".repeat(4096),
        nul.format_ts(hidden)
    );
    want.push((labels("nul", "c"), READ_TIME, glued, map(&[])));
    let ts = nul.write_line(Stream::Stderr, "the next record is whole");
    want.push((
        labels("nul", "c"),
        ts,
        "the next record is whole".to_string(),
        stream(Stream::Stderr),
    ));

    let mut garbage = pod(&w, "garbage").container("c");
    let bytes = random_bytes(0x5eed, 64 << 10);
    garbage.write_raw(&bytes);
    let end = bytes.iter().rposition(|&b| b == b'\n').expect("a newline");
    let (mut pieces, mut not_utf8) = (0u64, 0u64);
    for piece in bytes[..end].split(|&b| b == b'\n') {
        pieces += 1;
        not_utf8 += u64::from(std::str::from_utf8(piece).is_err());
        let line = String::from_utf8_lossy(piece).into_owned();
        want.push((labels("garbage", "c"), READ_TIME, line, map(&[])));
    }
    assert_eq!((pieces, not_utf8), (273, 271), "the seeded garbage");

    let mut rt = w.start("");
    wait_entries(&w.rx, want.len() + 50, &rt);
    healthy.write(50);
    wait_entries(&w.rx, want.len() + 100, &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_alive(w.port, &mut rt);
    want.extend(healthy.want.iter().cloned());
    assert_received(&w.rx, since, &want);
    assert_metrics(
        &metrics(w.port),
        &[
            ("ringtail_lines_malformed_total", Some(1.0 + pieces as f64)),
            ("ringtail_lines_repaired_total", Some(not_utf8 as f64)),
            ("ringtail_lines_truncated_total", Some(0.0)),
            ("ringtail_file_events_total{event=\"new\"}", Some(3.0)),
            (
                "ringtail_file_events_total{event=\"overlong_record\"}",
                None,
            ),
        ],
    );
    stop(&mut rt);
}

/// A 10 MiB line with no newline at all (raw bytes, not a record) and a 10 MiB CRI record
/// (containerd with `max_container_log_line_size: -1` writes it unsplit), appended while ringtail
/// runs: each is sent once, cut to `max_line_size` and marked `truncated` (the record keeps its
/// timestamp and stream), the rest is skipped, every byte is read exactly once, and the peak
/// resident set grows by less than one such line.
#[test]
fn ten_mib_lines_are_cut_to_max_line_size_in_bounded_memory() {
    let since = unix_now_ns();
    let mut w = World::new();
    let mut healthy = Healthy::new(&w);
    healthy.write(20);
    let mut rt = w.start("");
    wait_entries(&w.rx, 20, &rt);
    let before = status_kib(rt.pid(), "VmHWM");

    let text: Vec<u8> = (0..10usize << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let cut = String::from_utf8(text[..MAX_LINE].to_vec()).unwrap();
    let mut raw = pod(&w, "raw").container("c");
    let mut record = pod(&w, "record").container("c");
    record.set_max_line(usize::MAX);
    let started = Instant::now();
    raw.write_raw(&text);
    let ts_long = record.write_line(Stream::Stdout, &text);
    let ts_after = record.write_line(Stream::Stdout, "the line after the long one");
    healthy.write(20);
    let mut want = vec![
        (
            labels("raw", "c"),
            READ_TIME,
            cut.clone(),
            map(&[("truncated", "true")]),
        ),
        (
            labels("record", "c"),
            ts_long,
            cut,
            map(&[("stream", "stdout"), ("truncated", "true")]),
        ),
        (
            labels("record", "c"),
            ts_after,
            "the line after the long one".to_string(),
            stream(Stream::Stdout),
        ),
    ];
    want.extend(healthy.want.iter().cloned());
    wait_entries(&w.rx, want.len(), &rt);
    let on_disk = (raw.size() + record.size() + healthy.log.size()) as f64;
    let read = |m: &str| metric_value(m, "ringtail_read_bytes_total{source=\"pods\"}");
    assert!(
        wait_until(WAIT, || read(&metrics(w.port)) == Some(on_disk)),
        "read {:?} of {on_disk} bytes\n{}",
        read(&metrics(w.port)),
        rt.logs()
    );
    let took = started.elapsed();
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_alive(w.port, &mut rt);
    let peak = status_kib(rt.pid(), "VmHWM");
    eprintln!("10 MiB lines: 20 MiB read in {took:?}; VmHWM {before} KiB before, {peak} KiB after");
    assert!(peak < 100 << 10, "VmHWM {peak} KiB");
    assert!(
        peak - before < 10 << 10,
        "VmHWM grew from {before} to {peak} KiB: a 10 MiB line was held in memory"
    );
    assert_metrics(
        &metrics(w.port),
        &[
            ("ringtail_lines_malformed_total", Some(1.0)),
            ("ringtail_lines_truncated_total", Some(2.0)),
            ("ringtail_lines_repaired_total", Some(0.0)),
            (
                "ringtail_file_events_total{event=\"overlong_record\"}",
                Some(2.0),
            ),
            ("ringtail_file_events_total{event=\"new\"}", Some(3.0)),
        ],
    );
    assert_received(&w.rx, since, &want);
    stop(&mut rt);
}

/// A new `0.log` `ftruncate`d to 100 GiB: a hole with no newline in it. Promtail read such a
/// line whole and was OOM-killed. ringtail reads it in fixed buffers: one line of zeros, cut to
/// `max_line_size` and counted malformed and truncated, then the rest is skipped read by read,
/// at the speed of reading zeros (printed; the test does not wait for the 100 GiB). Meanwhile
/// the healthy container, on the same tailer thread, keeps arriving within seconds, the peak
/// resident set stays small, and SIGTERM still stops it at once. `max_line_size` is 64 KiB, under
/// the 128 KiB read size, so that this scenario does not depend on how the read size and
/// `max_line_size` combine (the 10 MiB scenario's business).
#[test]
fn a_sparse_100_gib_log_costs_neither_memory_nor_the_other_files() {
    let since = unix_now_ns();
    let mut w = World::new();
    let mut healthy = Healthy::new(&w);
    healthy.write(20);
    let sparse = pod(&w, "sparse").container("c");
    set_len(&sparse.current_path(), 100 << 30);
    let cfg =
        w.config("tail:\n  threads: 1\n")
            .replacen("loki:\n", "loki:\n  max_line_size: 64KiB\n", 1);
    let mut rt = w.start_config(&cfg);
    let (pid, cpu0, t0) = (rt.pid(), cpu_secs(rt.pid()), Instant::now());
    wait_entries(&w.rx, 21, &rt);
    for round in 0..4 {
        let written = Instant::now();
        healthy.write(10);
        wait_entries(&w.rx, 21 + 10 * (round + 1), &rt);
        assert!(
            written.elapsed() < Duration::from_secs(5),
            "round {round}: the healthy lines took {:?}",
            written.elapsed()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let read = |m: &str| metric_value(m, "ringtail_read_bytes_total{source=\"pods\"}");
    let (r1, at1) = (read(&metrics(w.port)).unwrap_or(0.0), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (r2, at2) = (read(&metrics(w.port)).unwrap_or(0.0), Instant::now());
    let rate = (r2 - r1) / at2.duration_since(at1).as_secs_f64();
    let peak = status_kib(pid, "VmHWM");
    eprintln!(
        "sparse 100 GiB: {:.0} MB/s of zeros, {:.1} GiB read in {:?} with {:.1} CPU-s, VmHWM \
         {peak} KiB; the whole file would take {:.0} s",
        rate / 1e6,
        r2 / (1u64 << 30) as f64,
        t0.elapsed(),
        cpu_secs(pid) - cpu0,
        (100u64 << 30) as f64 / rate.max(1.0),
    );
    assert!(r2 < (100u64 << 30) as f64, "read the whole hole already");
    assert!(peak < 100 << 10, "VmHWM {peak} KiB");
    assert_alive(w.port, &mut rt);
    assert_metrics(
        &metrics(w.port),
        &[
            ("ringtail_lines_malformed_total", Some(1.0)),
            ("ringtail_lines_truncated_total", Some(1.0)),
            (
                "ringtail_file_events_total{event=\"overlong_record\"}",
                Some(1.0),
            ),
            ("ringtail_file_events_total{event=\"new\"}", Some(2.0)),
            ("ringtail_files_tracked{source=\"pods\"}", Some(2.0)),
        ],
    );
    let stopping = Instant::now();
    stop(&mut rt);
    eprintln!("sparse 100 GiB: SIGTERM to exit {:?}", stopping.elapsed());
    let mut want = healthy.want.clone();
    want.push((
        labels("sparse", "c"),
        READ_TIME,
        "\0".repeat(64 << 10),
        map(&[("truncated", "true")]),
    ));
    assert_received(&w.rx, since, &want);
}

/// Things in the tree that are not log files: a container's `0.log` replaced by a directory
/// (holding a `0.log` of its own) after it was read, a `0.log` that is a symlink to itself, a
/// `1.log` that is a symlink to its own directory, a pod directory that is a symlink to itself,
/// and a container directory that is a symlink back to the root of the tree. The replaced file
/// counts as finished once its lines are shipped; the rest is passed over on every scan (no
/// metric counts them, and none is needed: nothing of them is a log), and the container goes on
/// in `1.log`.
#[test]
fn a_log_replaced_by_a_directory_and_symlink_loops_are_passed_over() {
    let since = unix_now_ns();
    let mut w = World::new();
    let mut healthy = Healthy::new(&w);
    healthy.write(20);
    let mut replaced = pod(&w, "replaced").container("c");
    let mut want = Vec::new();
    for i in 0..10 {
        let line = format!("before the directory {i}");
        let ts = replaced.write_line(Stream::Stdout, &line);
        want.push((labels("replaced", "c"), ts, line, stream(Stream::Stdout)));
    }
    let loops = pod(&w, "loops");
    let c = loops.dir().join("c");
    fs::create_dir_all(&c).unwrap();
    symlink("0.log", c.join("0.log")).unwrap();
    symlink(".", c.join("1.log")).unwrap();
    symlink("..", loops.dir().join("up")).unwrap();
    symlink("bad_self_u-self", w.pods().join("bad_self_u-self")).unwrap();

    let mut rt = w.start("");
    wait_entries(&w.rx, 30, &rt);
    let zero = replaced.current_path();
    fs::remove_file(&zero).unwrap();
    fs::create_dir(&zero).unwrap();
    fs::write(
        zero.join("0.log"),
        "2023-11-14T22:13:20Z stdout F inside the directory, never read\n",
    )
    .unwrap();
    replaced.restart();
    for i in 0..5 {
        let line = format!("in 1.log {i}");
        let ts = replaced.write_line(Stream::Stdout, &line);
        want.push((labels("replaced", "c"), ts, line, stream(Stream::Stdout)));
    }
    healthy.write(20);
    want.extend(healthy.want.iter().cloned());
    wait_entries(&w.rx, want.len(), &rt);
    let finished = |m: &str| metric_value(m, "ringtail_file_events_total{event=\"finished\"}");
    assert!(
        wait_until(WAIT, || finished(&metrics(w.port)) == Some(1.0)),
        "{}",
        metrics(w.port)
    );
    w.rx.wait_quiet(Duration::from_millis(700));
    assert_alive(w.port, &mut rt);
    assert_received(&w.rx, since, &want);
    assert_metrics(
        &metrics(w.port),
        &[
            ("ringtail_file_events_total{event=\"new\"}", Some(3.0)),
            ("ringtail_file_events_total{event=\"finished\"}", Some(1.0)),
            ("ringtail_file_events_total{event=\"unreadable\"}", None),
            ("ringtail_file_events_total{event=\"read_error\"}", None),
            ("ringtail_files_tracked{source=\"pods\"}", Some(2.0)),
            ("ringtail_lines_malformed_total", Some(0.0)),
        ],
    );
    stop(&mut rt);
}

/// A pod directory reached a second time through a symlink (`bad_alias…_u-alias ->
/// bad_healthy_u-healthy`: what a directory loop one level down amounts to) holds the same
/// files, and they are read once, with the labels of the real directory. kubelet never makes
/// symlinks in `/var/log/pods`; following one and taking the same inode under a new path for a
/// reused inode re-reads the whole file under another pod's name.
#[test]
fn a_pod_directory_reached_again_through_a_symlink_is_not_read_twice() {
    let since = unix_now_ns();
    let mut w = World::new();
    let mut healthy = Healthy::new(&w);
    healthy.write(30);
    let mut rt = w.start("");
    wait_entries(&w.rx, 30, &rt);
    // The scenario needs an alias listed before the real directory: ext4 lists a directory in
    // the hash order of its names (tmpfs newest first), so aliases are added until one is.
    let real = "bad_healthy_u-healthy";
    let listed_first = |name: &str| {
        let names: Vec<String> = fs::read_dir(w.pods())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.iter().position(|n| n == name) < names.iter().position(|n| n == real)
    };
    let found = (0..500).any(|i| {
        let alias = format!("bad_alias{i}_u-alias");
        symlink(real, w.pods().join(&alias)).unwrap();
        listed_first(&alias)
    });
    assert!(found, "no alias is listed before {real}");
    // Two scans of the tree (every 500 ms), then more lines.
    std::thread::sleep(Duration::from_millis(1200));
    healthy.write(30);
    assert!(
        wait_until(WAIT, || w
            .rx
            .lines()
            .iter()
            .any(|l| l == "healthy line 0059")),
        "{}",
        rt.logs()
    );
    w.rx.wait_quiet(Duration::from_millis(700));
    assert_alive(w.port, &mut rt);
    assert_received(&w.rx, since, &healthy.want);
    assert_metrics(
        &metrics(w.port),
        &[
            ("ringtail_file_events_total{event=\"new\"}", Some(1.0)),
            ("ringtail_files_tracked{source=\"pods\"}", Some(1.0)),
        ],
    );
    stop(&mut rt);
}

/// ringtail as `nobody` (root reads any file whatever its mode): a `0.log` with mode 000 owned by
/// root is counted once as unreadable and warned about once, not on every scan that retries it,
/// and a retry is not a new file either; a container directory with mode 700 cannot even be
/// listed, and is passed over without a word (no metric counts it). Once the modes allow it,
/// both are read from their start on the next scan.
#[test]
fn files_it_may_not_read_are_counted_once_and_read_once_allowed() {
    let since = unix_now_ns();
    let w = World::new();
    // The tempdir is 0700: nobody must reach the tree, the config and its working directory.
    chmod(w.dir.path(), 0o755);
    fs::create_dir_all(w.data()).unwrap();
    std::os::unix::fs::chown(w.data(), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut healthy = Healthy::new(&w);
    healthy.write(20);
    let mut later = Vec::new();
    let mut denied = pod(&w, "denied").container("c");
    for i in 0..10 {
        let line = format!("mode 000 {i}");
        let ts = denied.write_line(Stream::Stdout, &line);
        later.push((labels("denied", "c"), ts, line, stream(Stream::Stdout)));
    }
    chmod(&denied.current_path(), 0o000);
    let mut hidden = pod(&w, "hidden").container("c");
    for i in 0..5 {
        let line = format!("in a 700 directory {i}");
        let ts = hidden.write_line(Stream::Stderr, &line);
        later.push((labels("hidden", "c"), ts, line, stream(Stream::Stderr)));
    }
    chmod(hidden.dir(), 0o700);

    let mut rt = Ringtail::start_as(&w.config(""), &w.dir.path().join("run"), NOBODY, NOBODY);
    assert!(
        rt.wait_ready(w.port, Duration::from_secs(10)),
        "not ready\n{}",
        rt.logs()
    );
    let uid = fs::read_to_string(format!("/proc/{}/status", rt.pid())).unwrap();
    assert!(
        uid.contains("\nUid:\t65534\t65534\t65534\t65534\n"),
        "{uid}"
    );
    wait_entries(&w.rx, 20, &rt);
    // Several scans (every 500 ms): one warning, one count, whatever their number.
    std::thread::sleep(Duration::from_millis(1500));
    healthy.write(20);
    wait_entries(&w.rx, 40, &rt);
    let warning = format!(
        "cannot read {}: Permission denied (os error 13)",
        denied.current_path().display()
    );
    let warnings = rt.stderr_text().matches(&warning).count();
    let while_denied = metrics(w.port);

    chmod(&denied.current_path(), 0o644);
    chmod(hidden.dir(), 0o755);
    let mut want = healthy.want.clone();
    want.extend(later);
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(500));
    assert_alive(w.port, &mut rt);
    assert_received(&w.rx, since, &want);
    assert_eq!(warnings, 1, "{}", rt.logs());
    assert_metrics(
        &metrics(w.port),
        &[
            (
                "ringtail_file_events_total{event=\"unreadable\"}",
                Some(1.0),
            ),
            ("ringtail_files_tracked{source=\"pods\"}", Some(3.0)),
        ],
    );
    // A file that cannot be opened is not new on every scan that retries it.
    assert_metrics(
        &while_denied,
        &[
            (
                "ringtail_file_events_total{event=\"unreadable\"}",
                Some(1.0),
            ),
            ("ringtail_files_tracked{source=\"pods\"}", Some(1.0)),
            ("ringtail_file_events_total{event=\"new\"}", Some(1.0)),
        ],
    );
    assert_metrics(
        &metrics(w.port),
        &[("ringtail_file_events_total{event=\"new\"}", Some(3.0))],
    );
    stop(&mut rt);
}

/// The journal labels and metadata of [`app_entries`].
fn journal_expected(ts_us: u64, msg: &str) -> Expected {
    (
        map(&[
            ("source", "journal"),
            ("node", "test-node"),
            ("job", "journal"),
            ("unit", "app.service"),
            ("level", "info"),
        ]),
        ts_us as i64 * 1000,
        msg.to_string(),
        map(&[("pid", "100"), ("syslog_identifier", "app")]),
    )
}

/// `n` entries of `app.service` one millisecond apart from `t0`, with lines `<tag> <i>`.
fn app_entries(t0: u64, n: usize, tag: &str) -> (Vec<JournalEntry>, Vec<Expected>) {
    (0..n)
        .map(|i| {
            let ts = t0 + i as u64 * 1000;
            let msg = format!("{tag} {i}");
            let e = JournalEntry::new(ts)
                .field("_SYSTEMD_UNIT", "app.service")
                .field("SYSLOG_IDENTIFIER", "app")
                .field("_PID", "100")
                .field("PRIORITY", "6")
                .field("MESSAGE", &msg);
            (e, journal_expected(ts, &msg))
        })
        .unzip()
}

/// `ftruncate`: cuts the file to `len` bytes, or extends it with a hole.
fn set_len(path: &Path, len: u64) {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {} to {len}: {e}", path.display()));
}

/// Where a journal file's entries are: from the end of its hash tables to its last object
/// (offsets from the file header, systemd's `journal-def.h`).
fn journal_objects(path: &Path) -> (u64, u64) {
    let head = fs::read(path).unwrap();
    let at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap());
    let tables_end = (at(104) + at(112)).max(at(120) + at(128));
    (tables_end, at(136))
}

/// A journal file cut in the middle of its entries beside a good one, before ringtail starts:
/// libsystemd refuses the cut file whole (its header promises more than the file holds;
/// `journalctl` says "is truncated, ignoring file"), so none of its entries is sent, and all of
/// the good file's are. Then a file ringtail has read (and libsystemd has mapped) is cut at half
/// its size while followed: no SIGBUS, and entries written afterwards to another file arrive.
/// No metric counts the refused file: libsystemd skips it without telling its caller.
#[test]
fn journal_files_cut_short_leave_the_good_ones_read() {
    let since = unix_now_ns();
    let mut w = World::new();
    let mut healthy = Healthy::new(&w);
    healthy.write(20);
    let mut journal = JournalDir::new(&w.dir.path().join("journal"));
    let minute = 60_000_000;
    let t0 = realtime_now_us() - 30 * minute;
    let (good, mut want) = app_entries(t0, 300, "good");
    journal.write("good", &good);
    let (cut, _) = app_entries(t0 + minute, 300, "cut");
    let cut_file = journal.write("cut", &cut);
    let (first, last) = journal_objects(&cut_file);
    assert!(first < last, "objects from {first} to {last}");
    set_len(&cut_file, (first + last) / 2);

    let cfg = with_journal(&w.config(""), journal.path(), "7h");
    let mut rt = w.start_config(&cfg);
    wait_entries(&w.rx, 320, &rt);
    let (read, more) = app_entries(t0 + 2 * minute, 300, "read then cut");
    let read_file = journal.write("read", &read);
    want.extend(more);
    wait_entries(&w.rx, 620, &rt);
    set_len(&read_file, fs::metadata(&read_file).unwrap().len() / 2);
    std::thread::sleep(Duration::from_millis(600));
    let (after, more) = app_entries(t0 + 3 * minute, 300, "after the cut");
    journal.write("after", &after);
    want.extend(more);
    healthy.write(20);
    want.extend(healthy.want.iter().cloned());
    wait_entries(&w.rx, want.len(), &rt);
    w.rx.wait_quiet(Duration::from_millis(700));
    assert_alive(w.port, &mut rt);
    assert_received(&w.rx, since, &want);
    assert_metrics(
        &metrics(w.port),
        &[
            (
                "ringtail_file_events_total{event=\"journal_read_error\"}",
                None,
            ),
            ("ringtail_lines_malformed_total", Some(0.0)),
        ],
    );
    stop(&mut rt);
}
