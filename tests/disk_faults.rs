//! Disk faults: a full `data_dir` (positions cannot be written) and a log truncated in place
//! under write (logrotate's `copytruncate`). Neither may stop tailing; both must be loud, and
//! what is lost must be what the fault made unreadable, counted.
//!
//! Numbered lines (`support::numbered`) go to one container at a steady rate from a background
//! thread; the receiver feeds a [`Checker`] that accounts for every number. The writer records
//! where each line starts in its file, so the test knows exactly which lines a truncation took
//! away and which byte offsets are line ends.
//!
//! The full-disk scenario mounts a small tmpfs as the data dir: it needs root (the tests run as
//! root, in CI too) and fails, rather than skips, without it.

mod support;

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use support::cri::cri_record;
use support::numbered::{stream_of, ts_of, write_line, Checker, MAX_LINE, NAMESPACE, POD, UID};
use support::*;

/// How long anything that should happen within a few seconds may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);
/// `SAVE_EVERY` in src/run.rs: positions are written after every ack, but after a failed write
/// the next is tried a second later, so a full disk costs one error a second.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// `SCAN_EVERY` in src/run.rs: how stale discovery's size of a file can be, which is what
/// ringtail compares its read offset with to notice a truncation.
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// The longest CRI header the writer produces: `<RFC3339Nano, 9 digits> stderr F `.
const MAX_HEADER: usize = "2023-11-14T22:13:20.123456789Z stderr F ".len();
/// The longest record (header, line, newline).
const MAX_RECORD: u64 = (MAX_HEADER + MAX_LINE + 1) as u64;

static SERIAL: Mutex<()> = Mutex::new(());

/// One scenario at a time: each measures timing on a small machine.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Container `c0` of the numbered pod, and where every line written to it went.
struct Log {
    log: ContainerLog,
    /// The next line number.
    next: u64,
    /// CRI bytes of line `seq` (its whole record).
    rec_len: Vec<u64>,
    /// Offset in `0.log` after line `seq`: the line ends a committed position may stop at.
    end: Vec<u64>,
    /// Size of `0.log` as written (0 again after a truncation).
    size: u64,
    /// The first line of the current `0.log` content (the one after the last truncation).
    file_first: u64,
    buf: Vec<u8>,
}

impl Log {
    fn new(w: &World) -> Log {
        let pod = w.pod(NAMESPACE, POD, UID);
        Log {
            log: pod.container("c0"),
            next: 0,
            rec_len: Vec::new(),
            end: Vec::new(),
            size: 0,
            file_first: 0,
            buf: Vec::with_capacity(MAX_LINE),
        }
    }

    /// Writes `n` numbered lines, one `write(2)` per record, as containerd does.
    fn write(&mut self, n: u64) {
        for _ in 0..n {
            let seq = self.next;
            self.buf.clear();
            write_line(seq, &mut self.buf);
            let rec = cri_record(
                &self.log.format_ts(ts_of(seq)),
                stream_of(seq),
                "F",
                &self.buf,
            );
            self.log.write_raw(&rec);
            self.size += rec.len() as u64;
            self.rec_len.push(rec.len() as u64);
            self.end.push(self.size);
            self.next += 1;
        }
    }

    fn path(&self) -> PathBuf {
        self.log.current_path()
    }
}

/// Writes `per_tick` lines every 10 ms from a background thread until stopped.
struct Writer {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(log: Arc<Mutex<Log>>, per_tick: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("disk-faults-writer".into())
            .spawn(move || {
                let started = Instant::now();
                let mut ticks = 0u32;
                while !s.load(Ordering::SeqCst) {
                    lock(&l).write(per_tick);
                    ticks += 1;
                    // Paced on the start time, so that time spent in a copytruncate holding the
                    // lock is made up for rather than slowing the rate.
                    let due = started + Duration::from_millis(10) * ticks;
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            })
            .expect("spawn writer");
        Writer {
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn lines(&self) -> u64 {
        lock(&self.log).next
    }

    /// Stops writing; returns the number of lines written (numbers `0..n`).
    fn stop(mut self) -> u64 {
        self.halt();
        self.lines()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tmpfs mounted for the length of a test; unmounted on drop (lazily if something still holds
/// it, e.g. a ringtail that a failing assertion left running), so that a failed run does not
/// leave a mount behind.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("ringtail-test-data")
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("spawn mount: {e}"));
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} on {} failed ({}): {}\nthis scenario needs root and a \
             mount(8) that may mount tmpfs (CI runs the tests as root); it is not skipped",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Fills the file system of `dir` with `<dir>/filler` until a write fails with ENOSPC; returns
/// the filler's path and size.
fn fill(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("filler");
    let mut f = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let chunk = vec![0x5a_u8; 4096];
    let mut total = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => panic!("write to {} wrote nothing", path.display()),
            Ok(n) => total += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("write {}: {e}", path.display()),
        }
    }
    // Not one more byte fits, in any file.
    let probe = dir.join("probe");
    let err = fs::write(&probe, b"x").expect_err("a write to the full tmpfs succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let _ = fs::remove_file(&probe);
    (path, total)
}

/// The committed offset of `log`, as a restart would read it (panics on more than one entry for
/// `log`, or positions that the loader finds corrupt). `None` before the first write.
fn committed(data: &Path, log: &Path) -> Option<u64> {
    let loaded = committed_positions(data)?;
    assert_eq!(
        loaded.set_aside, None,
        "the loader found the positions corrupt"
    );
    let mine: Vec<u64> = loaded
        .files
        .iter()
        .filter(|f| f.path == log)
        .map(|f| f.offset)
        .collect();
    assert!(
        mine.len() <= 1,
        "one entry for {}: {:?}",
        log.display(),
        loaded.files
    );
    mine.first().copied()
}

fn counter(port: u16, series: &str) -> f64 {
    metric_value(&metrics(port), series).unwrap_or(0.0)
}

/// Waits for line numbers `0..n` to have arrived.
fn wait_distinct(checker: &Mutex<Checker>, n: u64, what: &str) {
    let ok = wait_until(WAIT, || lock(checker).distinct() >= n);
    let ch = lock(checker);
    assert!(
        ok,
        "{what}: {} of {n} lines arrived; missing {:?}",
        ch.distinct(),
        ch.missing_ranges(n).iter().take(10).collect::<Vec<_>>()
    );
}

/// SIGTERM; asserts a clean exit.
fn stop(rt: &mut Ringtail, checker: &Mutex<Checker>) {
    rt.sigterm();
    let status = rt.wait_exit(Duration::from_secs(15));
    lock(checker).run_ended(false, Instant::now());
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {status:?}\n{}",
        rt.logs()
    );
}

/// Nothing lost, nothing sent twice, nothing garbled, for lines `0..n`.
fn assert_all_once(checker: &Mutex<Checker>, n: u64) {
    let ch = lock(checker);
    assert_eq!(ch.missing_ranges(n), vec![], "missing lines");
    assert_eq!(ch.beyond(n), 0, "numbers never written arrived");
    assert_eq!(ch.unknown(), (0, &[][..]), "lines not as written");
    assert_eq!(
        ch.wrong(),
        (0, &[][..]),
        "lines with wrong labels or timestamps"
    );
    assert_eq!(ch.duplicates(), 0, "{:?}", ch.bad_duplicates());
    assert_eq!(ch.distinct(), n);
    assert_eq!(ch.stored(), n);
}

/// "Disk full for data_dir": positions cannot be written. Tailing goes on, every failed write is
/// logged (naming the file and what to do) and counted, the positions file on disk stays the
/// last good one, and once there is room again positions are written as before; a restart then
/// neither loses nor repeats a line.
#[test]
fn a_full_data_dir_is_loud_and_tailing_goes_on() {
    let _serial = serial();
    let mut w = World::new();
    // Declared after the world, so unmounted before the world's temp dir is removed.
    let _tmpfs = Tmpfs::mount(&w.data(), "256k");
    let checker = Checker::attach(&w.rx, 1);
    let log = Arc::new(Mutex::new(Log::new(&w)));
    let log_path = lock(&log).path();
    let data = w.data();
    let offset_now = || committed(&data, &log_path);
    // 300 lines/s, ~70 KB/s: positions change between every two saves.
    let writer = Writer::start(log.clone(), 3);
    lock(&checker).run_starting(w.rx.connections());
    let mut rt = w.start("");

    // A first good write with lines committed.
    assert!(
        wait_until(WAIT, || offset_now().is_some_and(|o| o > 0)),
        "no positions written with an offset for {}\n{}",
        log_path.display(),
        rt.logs()
    );
    assert_eq!(counter(w.port, "ringtail_positions_errors_total"), 0.0);

    let (filler, filled) = fill(&w.data());
    // The first failure: from then on nothing can replace the file (saves are one at a time, so
    // one that began before the disk filled has finished by now).
    assert!(
        wait_until(WAIT, || counter(w.port, "ringtail_positions_errors_total")
            >= 1.0),
        "no positions error counted with {} full ({filled} bytes of filler)\n{}",
        w.data().display(),
        rt.logs()
    );
    let good_offset = offset_now().expect("positions still there");
    let errors_at_full = counter(w.port, "ringtail_positions_errors_total");
    let full_since = Instant::now();

    // Three seconds full: each second's save fails, and lines keep flowing.
    thread::sleep(3 * SAVE_EVERY);
    let written_while_full = lock(&log).next;
    wait_distinct(&checker, written_while_full, "while data_dir was full");
    let errors_full = counter(w.port, "ringtail_positions_errors_total");
    let full_for = full_since.elapsed();
    assert!(
        errors_full >= errors_at_full + 2.0
            && errors_full
                <= errors_at_full
                    + (full_for.as_secs_f64() / SAVE_EVERY.as_secs_f64()).ceil()
                    + 1.0,
        "positions errors went from {errors_at_full} to {errors_full} in {full_for:?} of a full \
         disk (after a failure, a save is tried every {SAVE_EVERY:?})"
    );
    // What a restart would read is the last good write: the snapshot and the changes
    // appended before the disk filled (a failed append's partial lines are not committed),
    // read by ringtail's own loader, and an offset that is a line end within the file.
    assert_eq!(offset_now(), Some(good_offset));
    let log_size = fs::metadata(&log_path).expect("0.log").len();
    assert!(good_offset <= log_size, "{good_offset} > size {log_size}");
    assert!(
        lock(&log).end.binary_search(&good_offset).is_ok(),
        "committed offset {good_offset} is not a line end"
    );
    // Loud: every failure logged as an error naming the file, the cause, and what to do.
    let stderr = rt.stderr_text();
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot write positions"))
        .collect();
    assert!(
        failures.len() as f64 >= errors_full - 1.0,
        "{} logged positions failures for {errors_full} counted\n{stderr}",
        failures.len()
    );
    // The snapshot, or the changes file when an append failed.
    let want = format!("cannot write positions to {}/positions.", data.display());
    for l in &failures[..failures.len().min(3)] {
        for part in [
            want.as_str(),
            "No space left on device",
            "a restart now would re-send lines since the last good write",
            "Check that data_dir is writable and not full",
        ] {
            assert!(l.contains(part), "{part:?} not in {l:?}");
        }
        assert!(
            l.contains("level=error") || l.contains("ERROR") || l.contains("\"error\""),
            "not logged as an error: {l:?}"
        );
    }

    // Room again: the next save succeeds and the errors stop.
    fs::remove_file(&filler).expect("remove filler");
    let writes_before = counter(w.port, "ringtail_positions_writes_total");
    assert!(
        wait_until(WAIT, || offset_now().is_some_and(|o| o > good_offset)),
        "positions not written again after the filler was removed\n{}",
        rt.logs()
    );
    let errors_after = counter(w.port, "ringtail_positions_errors_total");
    let offset_after = offset_now().expect("positions");
    thread::sleep(3 * SAVE_EVERY);
    assert_eq!(
        counter(w.port, "ringtail_positions_errors_total"),
        errors_after,
        "positions errors still rising with room on the disk"
    );
    assert!(counter(w.port, "ringtail_positions_writes_total") >= writes_before + 3.0);
    let offset_later = offset_now().expect("positions");
    assert!(
        offset_later > offset_after,
        "positions stuck at {offset_after}"
    );
    assert!(lock(&log).end.binary_search(&offset_later).is_ok());

    // Stop and restart. The duplicate bound: a restart re-sends what was acked after the last
    // positions write that succeeded. While the disk was full that grew with every line (all of
    // them since `good_offset`), but the writes came back, and a graceful stop writes the acked
    // positions last of all (src/sink/mod.rs), with room on the disk: nothing acked is left
    // unrecorded, so the bound is 0 and any duplicate is a bug.
    let written = writer.stop();
    wait_distinct(&checker, written, "before the stop");
    stop(&mut rt, &checker);
    let final_offset = offset_now().expect("positions");
    assert_eq!(final_offset, *lock(&log).end.last().expect("lines written"));
    lock(&checker).run_starting(w.rx.connections());
    let mut rt = w.start("");
    lock(&log).write(200);
    let n = lock(&log).next;
    wait_distinct(&checker, n, "after the restart");
    assert!(w.rx.wait_quiet(Duration::from_secs(1)));
    assert_all_once(&checker, n);
    stop(&mut rt, &checker);
    assert_eq!(
        fs::read_dir(w.data())
            .expect("data dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("positions.json.corrupt"))
            .count(),
        0,
        "a positions file was set aside as corrupt"
    );
}

/// One `copytruncate`: the lines `first..=last` were in `0.log` when it was truncated.
#[derive(Clone, Debug)]
struct Truncation {
    first: u64,
    last: u64,
    /// `0.log`'s size when it was truncated.
    size: u64,
    copy: PathBuf,
}

/// Lines written every 10 ms in the truncation scenario: 500 lines/s, ~120 KB/s.
const TRUNC_PER_TICK: u64 = 5;
/// Time between truncations: `0.log` is ~180 KB when truncated, and takes as long to grow back,
/// well over [`SCAN_EVERY`], so ringtail sees every truncation (a file that grows back past the
/// read offset before discovery's next stat would be read on from there, not from 0).
const TRUNC_EVERY: Duration = Duration::from_millis(1500);
const _: () = assert!(TRUNC_EVERY.as_millis() >= 3 * SCAN_EVERY.as_millis());
const TRUNCATIONS: usize = 4;
/// Lines written at once right before each truncation: what ringtail may not have read yet.
const BURST: u64 = 100;

/// "Truncation (copytruncate) under write": the loss is bounded by what was truncated before it
/// could be read, and reported. The copy is named as logrotate's `dateext` names it, which is no
/// kubelet rotation, so ringtail does not read it: lines of `0.log` that ringtail had not read
/// when it was truncated are lost. Every missing line must be one of those (the tail of a
/// truncated file's content), the loss counted in `ringtail_bytes_lost_total{reason="truncated"}`,
/// every truncation counted, and the lines after each read again from offset 0, once.
#[test]
fn copytruncate_loses_only_what_was_unread_and_counts_it_with_inotify() {
    copytruncate_loses_only_what_was_unread_and_counts_it("tail: { inotify: true }\n");
}

#[test]
fn copytruncate_loses_only_what_was_unread_and_counts_it_polling() {
    copytruncate_loses_only_what_was_unread_and_counts_it("tail: { inotify: false }\n");
}

fn copytruncate_loses_only_what_was_unread_and_counts_it(tail: &str) {
    let _serial = serial();
    // The helper `ContainerLog::copytruncate` names its copy `0.log.<YYYYMMDD-HHMMSS>`, exactly a
    // kubelet rotation: ringtail would read it (and send its lines again), so it is not the
    // scenario; `copytruncate_dateext`'s `0.log-<...>` is not a log file to ringtail.
    use ringtail::sources::files::discover::log_file_kind;
    assert_eq!(log_file_kind("0.log.20231114-221320"), Some(true));
    assert_eq!(log_file_kind("0.log-20231114-221320"), None);

    let mut w = World::new();
    let checker = Checker::attach(&w.rx, 1);
    let log = Arc::new(Mutex::new(Log::new(&w)));
    let writer = Writer::start(log.clone(), TRUNC_PER_TICK);
    lock(&checker).run_starting(w.rx.connections());
    let mut rt = w.start(tail);

    let mut truncations: Vec<Truncation> = Vec::new();
    for _ in 0..TRUNCATIONS {
        thread::sleep(TRUNC_EVERY);
        let mut l = lock(&log);
        l.write(BURST);
        let t = Truncation {
            first: l.file_first,
            last: l.next - 1,
            size: l.size,
            copy: l.log.copytruncate_dateext(),
        };
        l.size = 0;
        l.file_first = l.next;
        assert_eq!(fs::metadata(&t.copy).expect("copy").len(), t.size);
        truncations.push(t);
    }
    thread::sleep(TRUNC_EVERY);
    let n = writer.stop();
    let last_trunc = truncations.last().expect("truncated").last;
    // Everything after the last truncation arrives (it was never truncated).
    let ok = wait_until(WAIT, || {
        lock(&checker)
            .missing_ranges(n)
            .iter()
            .all(|&(_, last, _)| last <= last_trunc)
    });
    assert!(
        ok && w.rx.wait_quiet(Duration::from_secs(1)),
        "lines written after the last truncation did not arrive: {:?}\n{}",
        lock(&checker).missing_ranges(n),
        rt.logs()
    );
    let m = metrics(w.port);
    stop(&mut rt, &checker);

    let ch = lock(&checker);
    let missing = ch.missing_ranges(n);
    let rec_len = lock(&log).rec_len.clone();
    // Each missing run is the tail of one truncated file's content: lines ringtail had not read
    // when it was truncated. A gap anywhere else is a line lost for another reason.
    let mut lost_bytes = 0u64;
    let mut lost_lines = 0u64;
    let mut report = String::new();
    for t in &truncations {
        let runs: Vec<&(u64, u64, u64)> = missing
            .iter()
            .filter(|&&(a, b, _)| b >= t.first && a <= t.last)
            .collect();
        if let Some(&&(a, b, c)) = runs.first() {
            assert_eq!(runs.len(), 1, "{t:?}: {runs:?}");
            assert!(a >= t.first, "{t:?}: lost {a}..={b}");
            assert_eq!(b, t.last, "{t:?}: lost {a}..={b}, not the unread tail");
            let bytes: u64 = rec_len[a as usize..=b as usize].iter().sum();
            report.push_str(&format!(
                "truncation of lines {}..={} ({} bytes): lines {a}..={b} lost, {bytes} bytes \
                 (ringtail had read up to byte {})\n",
                t.first,
                t.last,
                t.size,
                t.size - bytes
            ));
            lost_lines += c;
            lost_bytes += bytes;
        }
    }
    eprintln!("{report}{lost_lines} lines, {lost_bytes} bytes lost to {TRUNCATIONS} truncations");
    assert_eq!(
        missing.iter().map(|r| r.2).sum::<u64>(),
        lost_lines,
        "lines missing outside the truncated tails: {missing:?}, truncations {truncations:?}"
    );
    // The lines after each truncation were read from offset 0 again: none missing (above), none
    // twice, none cut or garbled (a read resumed at the old offset in the new content would
    // start mid-record), and the copies were not read.
    assert_eq!(ch.duplicates(), 0, "{:?}", ch.bad_duplicates());
    assert_eq!(ch.unknown(), (0, &[][..]), "lines not as written");
    assert_eq!(
        ch.wrong(),
        (0, &[][..]),
        "lines with wrong labels or timestamps"
    );
    assert_eq!(ch.beyond(n), 0);
    assert_eq!(ch.distinct(), n - lost_lines);

    // Reported: every truncation seen, and the bytes lost as far as ringtail can know them: the
    // largest size it saw the file at (a discovery scan, or the end of a read) minus its read
    // offset. What was written after its last look and cut before its next one is gone without
    // a trace (the copy holds it, and the copy is not a log ringtail reads), so the figure is a
    // lower bound, never more than the loss.
    assert_eq!(
        metric_value(&m, r#"ringtail_file_events_total{event="truncated"}"#),
        Some(TRUNCATIONS as f64),
        "truncations counted"
    );
    let counted =
        metric_value(&m, r#"ringtail_bytes_lost_total{reason="truncated"}"#).unwrap_or(0.0) as u64;
    let slack = TRUNCATIONS as u64 * MAX_RECORD;
    assert!(
        counted <= lost_bytes + slack,
        "ringtail_bytes_lost_total{{reason=\"truncated\"}} is {counted}, more than the {lost_bytes} \
         bytes of the lines lost to truncation (+ {slack}); the truncated files held {} bytes in \
         all\n{report}",
        truncations.iter().map(|t| t.size).sum::<u64>()
    );
    eprintln!("lost to truncation: {lost_bytes} bytes; reported (a lower bound): {counted}");
}
