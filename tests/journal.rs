//! The journal end to end: real journal files, written by `systemd-journal-remote`, read by the
//! real binary and pushed to a receiver that decodes exactly what Loki decodes. Every scenario
//! checks every line, label set and structured-metadata value it wrote.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::journal::{realtime_now_us, with_journal, JournalDir, JournalEntry};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const MINUTE_US: u64 = 60_000_000;
const HOUR_US: u64 = 60 * MINUTE_US;

/// One scenario's world: a journal directory, a data dir, a receiver, a metrics port.
struct Node {
    dir: tempfile::TempDir,
    journal: JournalDir,
    rx: LokiReceiver,
    port: u16,
    runs: usize,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("pods")).expect("pods dir");
        let journal = JournalDir::new(&dir.path().join("journal"));
        Node {
            dir,
            journal,
            rx: LokiReceiver::start(),
            port: free_port(),
            runs: 0,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config(&self, max_age: &str) -> String {
        let base = pods_only_config(
            &self.data(),
            &self.dir.path().join("pods"),
            &self.rx.url(),
            self.port,
        );
        with_journal(&base, self.journal.path(), max_age)
    }

    /// Starts ringtail (each run in its own folder for its stdout/stderr), waits for /ready.
    fn start(&mut self, max_age: &str) -> Ringtail {
        let cfg = self.config(max_age);
        self.start_config(&cfg)
    }

    fn start_config(&mut self, cfg: &str) -> Ringtail {
        self.start_env(cfg, &[])
    }

    /// [`start_config`](Self::start_config) with extra environment variables.
    fn start_env(&mut self, cfg: &str, env: &[(&str, &str)]) -> Ringtail {
        self.runs += 1;
        let run_dir = self.dir.path().join(format!("run{}", self.runs));
        fs::create_dir_all(&run_dir).expect("run dir");
        let mut rt = Ringtail::start_with_env(cfg, &run_dir, env);
        assert!(
            rt.wait_ready(self.port, Duration::from_secs(10)),
            "not ready\n{}",
            rt.logs()
        );
        rt
    }

    /// The committed journal cursor, once written.
    fn committed_cursor(&self) -> Option<String> {
        committed_positions(&self.data())?.journal_cursor
    }

    /// Waits until the committed cursor is the one of sequence number `seqnum` of its file.
    fn wait_committed(&self, seqnum: u64, rt: &Ringtail) -> String {
        let want = format!(";i={seqnum:x};");
        let ok = wait_until(WAIT, || {
            self.committed_cursor()
                .is_some_and(|c| format!("{c};").contains(&want))
        });
        assert!(
            ok,
            "cursor {:?} never reached i={seqnum:x}\n{}",
            self.committed_cursor(),
            rt.logs()
        );
        self.committed_cursor().unwrap_or_default()
    }
}

/// The stream labels of a journal entry: `unit` and `level` when given.
fn labels(unit: Option<&str>, level: Option<&str>) -> BTreeMap<String, String> {
    let mut l = map(&[
        ("source", "journal"),
        ("node", "test-node"),
        ("job", "journal"),
    ]);
    if let Some(u) = unit {
        l.insert("unit".into(), u.into());
    }
    if let Some(v) = level {
        l.insert("level".into(), v.into());
    }
    l
}

/// A plain entry of `app.service` (info, pid 100) with line `msg`.
fn app_entry(ts_us: u64, msg: &str) -> JournalEntry {
    JournalEntry::new(ts_us)
        .field("_SYSTEMD_UNIT", "app.service")
        .field("SYSLOG_IDENTIFIER", "app")
        .field("_PID", "100")
        .field("PRIORITY", "6")
        .field("MESSAGE", msg)
}

/// What ringtail sends for an [`app_entry`].
fn app_expected(ts_us: u64, msg: &str) -> Expected {
    (
        labels(Some("app.service"), Some("info")),
        ts_us as i64 * 1000,
        msg.to_string(),
        map(&[("pid", "100"), ("syslog_identifier", "app")]),
    )
}

/// `n` app entries one millisecond apart from `t0`, with lines `<tag> <i>`.
fn app_batch(t0: u64, n: usize, tag: &str) -> (Vec<JournalEntry>, Vec<Expected>) {
    (0..n)
        .map(|i| {
            let ts = t0 + i as u64 * 1000;
            let msg = format!("{tag} {i}");
            (app_entry(ts, &msg), app_expected(ts, &msg))
        })
        .unzip()
}

#[test]
fn priorities_units_pid_and_identifier_reach_loki_exactly() {
    let mut n = Node::new();
    let t0 = realtime_now_us() - 10 * MINUTE_US;
    let mut entries = Vec::new();
    let mut want = Vec::new();
    let keywords = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    for (p, keyword) in keywords.iter().enumerate() {
        let ts = t0 + p as u64;
        entries.push(
            JournalEntry::new(ts)
                .field("_SYSTEMD_UNIT", "containerd.service")
                .field("SYSLOG_IDENTIFIER", "containerd")
                .field("_PID", "4242")
                .field("PRIORITY", p.to_string())
                .field("MESSAGE", format!("priority {p}")),
        );
        want.push((
            labels(Some("containerd.service"), Some(keyword)),
            ts as i64 * 1000,
            format!("priority {p}"),
            map(&[("pid", "4242"), ("syslog_identifier", "containerd")]),
        ));
    }
    let t1 = t0 + 100;
    // No unit: the identifier is the unit (kernel messages, syslog senders).
    entries.push(
        JournalEntry::new(t1)
            .field("SYSLOG_IDENTIFIER", "kernel")
            .field("PRIORITY", "4")
            .field("MESSAGE", "eth0: link up"),
    );
    want.push((
        labels(Some("kernel"), Some("warning")),
        (t1 as i64) * 1000,
        "eth0: link up".into(),
        map(&[("syslog_identifier", "kernel")]),
    ));
    // Neither unit nor identifier, and a priority outside 0–7: neither label.
    entries.push(
        JournalEntry::new(t1 + 1)
            .field("PRIORITY", "9")
            .field("MESSAGE", "no unit, odd priority"),
    );
    want.push((
        labels(None, None),
        (t1 as i64 + 1) * 1000,
        "no unit, odd priority".into(),
        BTreeMap::new(),
    ));
    // No PRIORITY, no identifier: a unit and a pid only.
    entries.push(
        JournalEntry::new(t1 + 2)
            .field("_SYSTEMD_UNIT", "kubelet.service")
            .field("_PID", "7")
            .field("MESSAGE", "no priority"),
    );
    want.push((
        labels(Some("kubelet.service"), None),
        (t1 as i64 + 2) * 1000,
        "no priority".into(),
        map(&[("pid", "7")]),
    ));
    // No MESSAGE: skipped and counted.
    entries.push(
        JournalEntry::new(t1 + 3)
            .field("_SYSTEMD_UNIT", "kubelet.service")
            .field("PRIORITY", "6")
            .field("CODE_FILE", "x.c"),
    );
    // An empty unit falls back to the identifier.
    entries.push(
        JournalEntry::new(t1 + 4)
            .field("_SYSTEMD_UNIT", "")
            .field("SYSLOG_IDENTIFIER", "sshd")
            .field("_PID", "9")
            .field("PRIORITY", "5")
            .field("MESSAGE", "Accepted publickey for root"),
    );
    want.push((
        labels(Some("sshd"), Some("notice")),
        (t1 as i64 + 4) * 1000,
        "Accepted publickey for root".into(),
        map(&[("pid", "9"), ("syslog_identifier", "sshd")]),
    ));
    n.journal.write("system", &entries);

    let mut rt = n.start("7h");
    assert!(
        n.rx.wait_for_entries(want.len(), WAIT),
        "{}\n{}",
        n.rx.summary(),
        rt.logs()
    );
    n.rx.wait_quiet(Duration::from_millis(700));
    assert_exactly(&n.rx, &want);
    let m = metrics(n.port);
    assert_eq!(
        metric_value(&m, "ringtail_read_lines_total{source=\"journal\"}"),
        Some(want.len() as f64),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "ringtail_file_events_total{event=\"journal_no_message\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let err = rt.stderr_text();
    assert!(
        err.contains("starting at now - max_age (no committed cursor)"),
        "{err}"
    );
    stop(&mut rt);
}

#[test]
fn binary_fields_multiline_and_large_compressed_messages() {
    let mut n = Node::new();
    let t0 = realtime_now_us() - 5 * MINUTE_US;
    let multiline = b"first line\nsecond line\n\tindented \xff\xfe end\n".to_vec();
    // Compressible (a 64-byte period), so journal-remote stores it zstd-compressed.
    let pattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
    let big = |tag: &str, len: usize| -> String {
        let mut s = format!("{tag}:");
        while s.len() < len {
            s.push_str(pattern);
        }
        s.truncate(len);
        s
    };
    let big64 = big("big64", 64 << 10);
    let big300 = big("big300", 300 << 10);
    let entries = vec![
        JournalEntry::new(t0)
            .field("_SYSTEMD_UNIT", "app.service")
            .field("PRIORITY", "3")
            .binary_field("MESSAGE", &multiline),
        // Valid UTF-8 in the binary form, and an identifier that is not UTF-8.
        JournalEntry::new(t0 + 1)
            .binary_field("_SYSTEMD_UNIT", "caf\u{e9}.service")
            .binary_field("SYSLOG_IDENTIFIER", b"id\xff")
            .binary_field("_PID", "31")
            .field("MESSAGE", "binary fields"),
        JournalEntry::new(t0 + 2)
            .field("_SYSTEMD_UNIT", "app.service")
            .field("PRIORITY", "6")
            .field("MESSAGE", &big64),
        JournalEntry::new(t0 + 3)
            .field("_SYSTEMD_UNIT", "app.service")
            .field("PRIORITY", "6")
            .field("MESSAGE", &big300),
    ];
    let file = n.journal.write("system", &entries);
    // Stored compressed: 256 bytes of the message appear nowhere in the file.
    let raw = fs::read(&file).expect("journal file");
    let needle = &big64.as_bytes()[1000..1256];
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "the 64 KiB message is stored uncompressed"
    );

    let mut rt = n.start("7h");
    assert!(
        n.rx.wait_for_entries(entries.len(), WAIT),
        "{}\n{}",
        n.rx.summary(),
        rt.logs()
    );
    n.rx.wait_quiet(Duration::from_millis(700));
    let max_line = 256 << 10;
    assert_exactly(
        &n.rx,
        &[
            (
                labels(Some("app.service"), Some("err")),
                t0 as i64 * 1000,
                "first line\nsecond line\n\tindented \u{FFFD}\u{FFFD} end\n".into(),
                BTreeMap::new(),
            ),
            (
                labels(Some("caf\u{e9}.service"), None),
                (t0 as i64 + 1) * 1000,
                "binary fields".into(),
                map(&[("pid", "31"), ("syslog_identifier", "id\u{FFFD}")]),
            ),
            (
                labels(Some("app.service"), Some("info")),
                (t0 as i64 + 2) * 1000,
                big64.clone(),
                BTreeMap::new(),
            ),
            (
                labels(Some("app.service"), Some("info")),
                (t0 as i64 + 3) * 1000,
                big300[..max_line].to_string(),
                map(&[("truncated", "true")]),
            ),
        ],
    );
    let m = metrics(n.port);
    assert_eq!(
        metric_value(&m, "ringtail_lines_truncated_total"),
        Some(1.0),
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn resume_after_kill9_sends_exactly_the_entries_after_the_cursor() {
    let mut n = Node::new();
    let t0 = realtime_now_us() - 20 * MINUTE_US;
    let (first, mut want) = app_batch(t0, 50, "before");
    n.journal.write("system", &first);
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(50, WAIT), "{}", rt.logs());
    // The cursor of the 50th entry is on disk (positions are written every second after acks).
    n.wait_committed(50, &rt);
    rt.kill9();

    // While it is down: more in the same file, and a new file.
    let (more, w) = app_batch(t0 + MINUTE_US, 30, "appended");
    n.journal.write("system", &more);
    want.extend(w);
    let (other, w) = app_batch(t0 + 2 * MINUTE_US, 20, "new file");
    n.journal.write("other", &other);
    want.extend(w);

    let mut rt = n.start("7h");
    assert!(
        n.rx.wait_for_entries(100, WAIT),
        "{}\n{}",
        n.rx.summary(),
        rt.logs()
    );
    n.rx.wait_quiet(Duration::from_millis(1500));
    // Exactly once each: nothing lost, the cursor's entry not sent again.
    assert_exactly(&n.rx, &want);
    assert!(
        rt.stderr_text()
            .contains("resuming after the committed cursor"),
        "{}",
        rt.logs()
    );
    stop(&mut rt);
}

/// After the 5 entries of `app_batch(t0, 5, "first")` arrived: appends 5 entries to the
/// `system` journal, then, 1.5 s later, writes 5 into a new journal file; returns how long
/// each took to arrive, from its write.
fn append_then_new_file(
    n: &mut Node,
    t0: u64,
    want: &mut Vec<Expected>,
    rt: &Ringtail,
) -> (Duration, Duration) {
    let (b, w) = app_batch(t0 + 10_000, 5, "appended");
    want.extend(w);
    let t = Instant::now();
    n.journal.write("system", &b);
    assert!(n.rx.wait_for_entries(10, WAIT), "{}", rt.logs());
    let appended = t.elapsed();

    std::thread::sleep(Duration::from_millis(1500));
    let (c, w) = app_batch(t0 + 20_000, 5, "second writer");
    want.extend(w);
    let t = Instant::now();
    n.journal.write("second", &c);
    assert!(n.rx.wait_for_entries(15, WAIT), "{}", rt.logs());
    (appended, t.elapsed())
}

#[test]
fn entries_and_files_written_while_it_waits_arrive_within_seconds() {
    let mut n = Node::new();
    let t0 = realtime_now_us() - MINUTE_US;
    let (a, mut want) = app_batch(t0, 5, "first");
    n.journal.write("system", &a);
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(5, WAIT), "{}", rt.logs());
    // Idle, waiting on the journal.
    std::thread::sleep(Duration::from_millis(1500));
    let (appended, new_file) = append_then_new_file(&mut n, t0, &mut want, &rt);

    // From the start of the writer's run (it takes a few tens of ms) to the receiver.
    eprintln!("appended entries after {appended:?}, a new file's after {new_file:?}");
    assert!(appended < Duration::from_secs(3), "{appended:?}");
    assert!(new_file < Duration::from_secs(3), "{new_file:?}");
    n.rx.wait_quiet(Duration::from_millis(700));
    assert_exactly(&n.rx, &want);
    stop(&mut rt);
}

/// A preloaded library whose `inotify_init`/`inotify_init1` fail with `EMFILE`, as on a node
/// whose `fs.inotify.max_user_instances` is used up by other programs.
fn no_inotify_library(dir: &std::path::Path) -> PathBuf {
    let src = dir.join("no_inotify.c");
    let lib = dir.join("no_inotify.so");
    fs::write(
        &src,
        "#include <errno.h>\n\
         int inotify_init(void) { errno = EMFILE; return -1; }\n\
         int inotify_init1(int flags) { (void)flags; errno = EMFILE; return -1; }\n",
    )
    .expect("write the shim's source");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("cc (a C compiler; scripts/ensure-deps installs one)");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// Without inotify, libsystemd cannot wait for the journal: ringtail polls, and opens the
/// directory again every few seconds, so appended entries and a new journal file still arrive,
/// each exactly once, and the fallback is counted and logged.
#[test]
fn without_inotify_the_journal_is_polled_and_new_files_are_found() {
    let mut n = Node::new();
    let lib = no_inotify_library(n.dir.path());
    let t0 = realtime_now_us() - MINUTE_US;
    let (a, mut want) = app_batch(t0, 5, "first");
    n.journal.write("system", &a);
    let cfg = n.config("7h");
    let lib = lib.to_string_lossy().to_string();
    let mut rt = n.start_env(&cfg, &[("LD_PRELOAD", &lib)]);
    assert!(n.rx.wait_for_entries(5, WAIT), "{}", rt.logs());
    let (_, new_file) = append_then_new_file(&mut n, t0, &mut want, &rt);
    eprintln!("a new file's entries after {new_file:?} without inotify");
    // Found by a reopen (every 5 s), not by a restart.
    assert!(new_file < Duration::from_secs(8), "{new_file:?}");
    n.rx.wait_quiet(Duration::from_millis(1500));
    assert_exactly(&n.rx, &want);

    let m = metrics(n.port);
    for event in ["journal_wait_failed", "journal_reopened"] {
        let series = format!("ringtail_file_events_total{{event=\"{event}\"}}");
        assert!(
            metric_value(&m, &series).unwrap_or(0.0) >= 1.0,
            "{series}\n{m}"
        );
    }
    let logs = rt.logs();
    assert!(
        logs.contains("cannot wait for journal changes")
            && logs.contains("fs.inotify.max_user_instances"),
        "{logs}"
    );
    stop(&mut rt);
}

#[test]
fn a_file_renamed_by_rotation_loses_and_repeats_nothing() {
    let mut n = Node::new();
    let t0 = realtime_now_us() - MINUTE_US;
    let (a, mut want) = app_batch(t0, 20, "before rotation");
    let active = n.journal.write("system", &a);
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(20, WAIT), "{}", rt.logs());
    // journald's rotation: the active file is renamed to an archive name, a new one follows.
    let archived =
        active.with_file_name("system@0123456789abcdef-0000000000000001-0000000000000001.journal");
    fs::rename(&active, &archived).expect("rotate");
    let (b, w) = app_batch(t0 + 100_000, 20, "after rotation");
    want.extend(w);
    n.journal.write("system", &b);
    assert!(n.rx.wait_for_entries(40, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(1500));
    assert_exactly(&n.rx, &want);

    // And across a restart (SIGTERM commits what was acked): the cursor is in the new file,
    // the archive is behind it.
    stop(&mut rt);
    let (c, w) = app_batch(t0 + 200_000, 5, "after restart");
    want.extend(w);
    n.journal.write("system", &c);
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(45, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(1500));
    assert_exactly(&n.rx, &want);
    stop(&mut rt);
}

#[test]
fn entries_older_than_max_age_are_not_sent() {
    let mut n = Node::new();
    let now = realtime_now_us();
    let (old, _) = app_batch(now - 3 * HOUR_US, 10, "three hours ago");
    let (older_than_1h, _) = app_batch(now - 61 * MINUTE_US, 10, "61 minutes ago");
    let (recent, want) = app_batch(now - 30 * MINUTE_US, 10, "30 minutes ago");
    n.journal.write("system", &old);
    n.journal.write("system", &older_than_1h);
    n.journal.write("other", &recent);
    let mut rt = n.start("1h");
    assert!(n.rx.wait_for_entries(10, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(1500));
    assert_exactly(&n.rx, &want);
    stop(&mut rt);
}

#[test]
fn a_cursor_older_than_max_age_starts_at_max_age_and_says_so() {
    let mut n = Node::new();
    let now = realtime_now_us();
    let (old, mut want) = app_batch(now - 3 * HOUR_US, 10, "three hours ago");
    n.journal.write("system", &old);
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(10, WAIT), "{}", rt.logs());
    n.wait_committed(10, &rt);
    stop(&mut rt);

    // Down for a while: the committed entry is now older than the (new) max_age.
    let (skipped, _) = app_batch(now - 2 * HOUR_US, 10, "two hours ago");
    let (recent, w) = app_batch(now - 10 * MINUTE_US, 10, "ten minutes ago");
    want.extend(w);
    n.journal.write("system", &skipped);
    n.journal.write("system", &recent);
    let mut rt = n.start("1h");
    assert!(n.rx.wait_for_entries(20, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(1500));
    assert_exactly(&n.rx, &want);
    let err = rt.stderr_text();
    assert!(err.contains("is older than logs.journal.max_age"), "{err}");
    stop(&mut rt);
}

#[test]
fn an_unusable_cursor_starts_at_max_age_and_a_vacuumed_one_at_the_next_entry() {
    let mut n = Node::new();
    let t0 = realtime_now_us() - 20 * MINUTE_US;
    let (a, mut want) = app_batch(t0, 10, "first");
    n.journal.write("first", &a);
    // A cursor that is not one.
    fs::create_dir_all(n.data()).expect("data dir");
    fs::write(
        n.data().join("positions.json"),
        r#"{"version":"1","saved_at":1,"files":[],"journal_cursor":"not a cursor"}"#,
    )
    .expect("positions");
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(10, WAIT), "{}", rt.logs());
    n.wait_committed(10, &rt);
    stop(&mut rt);
    let err = rt.stderr_text();
    assert!(err.contains("is not usable"), "{err}");
    assert!(err.contains("level=warn"), "{err}");

    // The file holding the committed entry is vacuumed while ringtail is down.
    fs::remove_file(n.journal.path().join("first.journal")).expect("vacuum");
    let (b, w) = app_batch(t0 + MINUTE_US, 10, "second");
    want.extend(w);
    n.journal.write("second", &b);
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(20, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(1500));
    assert_exactly(&n.rx, &want);
    let err = rt.stderr_text();
    assert!(err.contains("no longer in the journal"), "{err}");
    stop(&mut rt);
}

/// journald vacuums files ringtail has not read while it is down: it resumes at the oldest
/// entry still there, and says, in a warning and in `ringtail_journal_lost_seconds_total`, what
/// span was lost. (systemd-journal-remote numbers each file in its own sequence, so how many
/// entries is unknown here; on a node journald's one sequence gives the count, unit-tested in
/// src/sources/journal.rs.)
#[test]
fn entries_vacuumed_before_they_were_read_are_reported_with_their_span() {
    let mut n = Node::new();
    let t0 = realtime_now_us() - 20 * MINUTE_US;
    let (a, mut want) = app_batch(t0, 10, "first");
    n.journal.write("first", &a);
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(10, WAIT), "{}", rt.logs());
    n.wait_committed(10, &rt);
    stop(&mut rt);

    // While ringtail is down, two more files are written, and journald vacuums the oldest two:
    // the one ringtail read and the next, which it never saw.
    let (b, _) = app_batch(t0 + MINUTE_US, 10, "second");
    n.journal.write("second", &b);
    let (c, w) = app_batch(t0 + 2 * MINUTE_US, 10, "third");
    want.extend(w);
    n.journal.write("third", &c);
    for f in ["first", "second"] {
        fs::remove_file(n.journal.path().join(format!("{f}.journal"))).expect("vacuum");
    }
    let mut rt = n.start("7h");
    assert!(n.rx.wait_for_entries(20, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(1500));
    assert_exactly(&n.rx, &want);
    let err = rt.stderr_text();
    // From the committed entry (first 9, at t0 + 9 ms) to the oldest left (third 0).
    let span = (2 * MINUTE_US - 9_000) as f64 / 1e6;
    assert!(
        err.contains("level=warn")
            && err.contains("no longer in the journal")
            && err.contains("were lost"),
        "{err}"
    );
    let m = metrics(n.port);
    let lost = metric_value(&m, "ringtail_journal_lost_seconds_total").unwrap_or(-1.0);
    assert!(
        (lost - span).abs() < 1e-3,
        "lost {lost} s, want {span}\n{m}"
    );
    assert_eq!(
        metric_value(&m, "ringtail_journal_lost_entries_total"),
        Some(0.0),
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn a_missing_journal_directory_is_waited_for_quietly() {
    let mut n = Node::new();
    let later = n.dir.path().join("journal-later");
    let cfg = with_journal(
        &pods_only_config(&n.data(), &n.dir.path().join("pods"), &n.rx.url(), n.port),
        &later,
        "7h",
    );
    let mut rt = n.start_config(&cfg);
    std::thread::sleep(Duration::from_millis(1500));
    let err = rt.stderr_text();
    assert_eq!(
        err.matches("cannot open the journal").count(),
        1,
        "one info line\n{err}"
    );
    assert!(
        !err.contains("level=warn") && !err.contains("level=error"),
        "{err}"
    );
    // The journal appears (persistent storage was enabled): it is picked up.
    let mut j = JournalDir::new(&later);
    let (a, want) = app_batch(realtime_now_us() - MINUTE_US, 3, "late");
    j.write("system", &a);
    assert!(n.rx.wait_for_entries(3, WAIT), "{}", rt.logs());
    n.rx.wait_quiet(Duration::from_millis(700));
    assert_exactly(&n.rx, &want);
    let err = rt.stderr_text();
    assert_eq!(err.matches("cannot open the journal").count(), 1, "{err}");
    stop(&mut rt);
}
