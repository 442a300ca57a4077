//! A kubelet/containerd log tree for tests (`protocol-facts.md` §4).
//!
//! Layout: `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`. Records are written as
//! containerd writes them: `<RFC3339Nano ts> <stdout|stderr> <P|F> <content>\n`, one `write(2)`
//! per record on an `O_APPEND` handle, lines over 16384 bytes split into `P` records of exactly
//! 16384 bytes and a final `F`, one timestamp per record. Rotation is kubelet's: gzip the older
//! rotated files (`X` → `X.tmp` → `X.gz`, remove `X`), rename `N.log` → `N.log.YYYYMMDD-HHMMSS`,
//! then containerd reopens a fresh `N.log`.
//!
//! Timestamps come from a deterministic [`Clock`] (start [`Clock::START_NS`], +1 ms per record),
//! so a test knows the exact `ts_ns` of every line.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// containerd's default `max_container_log_line_size`.
pub const CRI_MAX_LINE: usize = 16384;

const NS_PER_SEC: i64 = 1_000_000_000;

/// A CRI stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A deterministic timestamp source, shared by its clones: each [`next`](Clock::next) returns
/// the current instant and advances it by the step (1 ms by default).
#[derive(Clone, Debug)]
pub struct Clock {
    next: Arc<AtomicI64>,
    step_ns: i64,
}

impl Clock {
    /// 2023-11-14T22:13:20Z, a whole second, so that the first stamps exercise the trimming
    /// of trailing zeros (`…20Z`, `…20.001Z`, `…20.01Z`, `…20.1Z`).
    pub const START_NS: i64 = 1_700_000_000 * NS_PER_SEC;

    /// Starts at [`Clock::START_NS`], +1 ms per tick.
    pub fn new() -> Clock {
        Clock::starting_at(Clock::START_NS)
    }

    /// Starts at `start_ns`, +1 ms per tick.
    pub fn starting_at(start_ns: i64) -> Clock {
        Clock::with_step(start_ns, 1_000_000)
    }

    pub fn with_step(start_ns: i64, step_ns: i64) -> Clock {
        Clock {
            next: Arc::new(AtomicI64::new(start_ns)),
            step_ns,
        }
    }

    /// Starts at the current wall-clock time (for sources where Loki's age limits matter).
    pub fn from_now() -> Clock {
        Clock::starting_at(unix_now_ns())
    }

    /// Returns the current instant and advances the clock.
    pub fn next(&self) -> i64 {
        self.next.fetch_add(self.step_ns, Ordering::SeqCst)
    }

    /// The instant the next [`next`](Clock::next) will return.
    pub fn peek(&self) -> i64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Moves the clock to `ts_ns`.
    pub fn set(&self, ts_ns: i64) {
        self.next.store(ts_ns, Ordering::SeqCst);
    }

    pub fn step_ns(&self) -> i64 {
        self.step_ns
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

pub fn unix_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats Unix nanoseconds as Go's `time.RFC3339Nano` in a zone `offset_secs` east of UTC:
/// fraction with trailing zeros trimmed (no dot when zero), `Z` for offset 0, else `±hh:mm`.
/// `format_rfc3339nano(Clock::START_NS + 1_000_000, 3600)` is `2023-11-14T23:13:20.001+01:00`.
pub fn format_rfc3339nano(ts_ns: i64, offset_secs: i32) -> String {
    let local = ts_ns + i64::from(offset_secs) * NS_PER_SEC;
    let secs = local.div_euclid(NS_PER_SEC);
    let nanos = local.rem_euclid(NS_PER_SEC);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    if offset_secs == 0 {
        s.push('Z');
    } else {
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let off = offset_secs.unsigned_abs();
        s.push_str(&format!("{sign}{:02}:{:02}", off / 3600, off / 60 % 60));
    }
    s
}

/// Parses an RFC 3339 timestamp (any fraction length up to 9 digits, `Z`/`z` or `±hh:mm`) to
/// Unix nanoseconds.
pub fn parse_rfc3339nano(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, n: usize| -> Option<i64> {
        let d = s.get(from..from + n)?;
        if !d.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        d.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)? as u32, num(8, 2)? as u32);
    let (h, mi, se) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(start, digits)? * 10i64.pow((9 - digits) as u32);
        i = end;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        &sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let off = num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
    Some(secs * NS_PER_SEC + nanos)
}

/// kubelet's rotation suffix, `YYYYMMDD-HHMMSS`, for Unix seconds (UTC).
pub fn rotation_suffix(unix_secs: i64) -> String {
    let (y, mo, d) = civil_from_days(unix_secs.div_euclid(86_400));
    let sod = unix_secs.rem_euclid(86_400);
    format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// One CRI record, as bytes: `<ts> <stream> <tag> <content>\n`.
pub fn cri_record(ts: &str, stream: Stream, tag: &str, content: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(ts.len() + content.len() + 12);
    rec.extend_from_slice(ts.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_str().as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(tag.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(content);
    rec.push(b'\n');
    rec
}

/// A pod's log directory, `<root>/<namespace>_<pod>_<uid>`.
#[derive(Clone, Debug)]
pub struct PodDir {
    pub root: PathBuf,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    dir: PathBuf,
    clock: Clock,
}

impl PodDir {
    /// Creates the directory (and `root`). Containers share a fresh [`Clock`].
    pub fn new(root: &Path, namespace: &str, pod: &str, uid: &str) -> PodDir {
        let dir = root.join(format!("{namespace}_{pod}_{uid}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        PodDir {
            root: root.to_path_buf(),
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: uid.to_string(),
            dir,
            clock: Clock::new(),
        }
    }

    /// Uses `clock` for containers created from now on (share one clock across pods to keep
    /// timestamps unique and increasing).
    pub fn with_clock(mut self, clock: Clock) -> PodDir {
        self.clock = clock;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Creates `<container>/0.log` (empty) and returns its writer.
    pub fn container(&self, name: &str) -> ContainerLog {
        ContainerLog::create(self.dir.join(name), name, 0, self.clock.clone())
    }

    /// Removes the whole pod directory (pod garbage collection).
    pub fn remove(&self) {
        fs::remove_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("remove {}: {e}", self.dir.display()));
    }
}

/// Writes one container's log files like containerd, and rotates them like kubelet.
#[derive(Debug)]
pub struct ContainerLog {
    dir: PathBuf,
    name: String,
    restart: u32,
    file: File,
    clock: Clock,
    offset_secs: i32,
    max_line: usize,
    max_files: usize,
    last_rotation_secs: i64,
}

impl ContainerLog {
    /// Creates `<dir>/<restart>.log` (and `dir`).
    pub fn create(dir: PathBuf, name: &str, restart: u32, clock: Clock) -> ContainerLog {
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let file = open_append(&dir.join(format!("{restart}.log")));
        ContainerLog {
            dir,
            name: name.to_string(),
            restart,
            file,
            clock,
            offset_secs: 0,
            max_line: CRI_MAX_LINE,
            max_files: 5,
            last_rotation_secs: 0,
        }
    }

    /// The container directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current restart count (the `N` of `N.log`).
    pub fn restart_count(&self) -> u32 {
        self.restart
    }

    /// `<dir>/<restart>.log`.
    pub fn path(&self, restart: u32) -> PathBuf {
        self.dir.join(format!("{restart}.log"))
    }

    /// The file containerd writes now.
    pub fn current_path(&self) -> PathBuf {
        self.path(self.restart)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Writes timestamps in a zone `secs` east of UTC (`3600` gives `+01:00`; 0 gives `Z`).
    pub fn set_zone_offset(&mut self, secs: i32) {
        self.offset_secs = secs;
    }

    /// containerd's `max_container_log_line_size` (default 16384).
    pub fn set_max_line(&mut self, bytes: usize) {
        assert!(bytes > 0);
        self.max_line = bytes;
    }

    /// kubelet's `containerLogMaxFiles` (default 5): rotation keeps at most `max - 2` rotated
    /// files before renaming the current one.
    pub fn set_max_files(&mut self, max: usize) {
        self.max_files = max;
    }

    /// The timestamp text this log writes for `ts_ns`.
    pub fn format_ts(&self, ts_ns: i64) -> String {
        format_rfc3339nano(ts_ns, self.offset_secs)
    }

    /// Writes one record with an explicit timestamp and tag (`P`, `F`, or e.g. `F:x`).
    pub fn write_record(&mut self, ts_ns: i64, stream: Stream, tag: &str, content: &[u8]) {
        let rec = cri_record(&self.format_ts(ts_ns), stream, tag, content);
        self.write_raw(&rec);
    }

    /// Writes one line of container output, as containerd does: a single `F` record, or `P`
    /// records of exactly `max_line` bytes and a final `F` when longer. Each record takes the
    /// next clock tick. Returns the timestamp of the first record. `content` must not contain
    /// `\n` (containerd would split there).
    pub fn write_line(&mut self, stream: Stream, content: impl AsRef<[u8]>) -> i64 {
        self.write_line_records(stream, content)[0]
    }

    /// Like [`write_line`](Self::write_line); returns the timestamp of every record written.
    pub fn write_line_records(&mut self, stream: Stream, content: impl AsRef<[u8]>) -> Vec<i64> {
        let content = content.as_ref();
        assert!(
            !content.contains(&b'\n'),
            "write_line: content must not contain a newline"
        );
        let mut stamps = Vec::new();
        let mut rest = content;
        while rest.len() > self.max_line {
            let (chunk, tail) = rest.split_at(self.max_line);
            let ts = self.clock.next();
            self.write_record(ts, stream, "P", chunk);
            stamps.push(ts);
            rest = tail;
        }
        let ts = self.clock.next();
        self.write_record(ts, stream, "F", rest);
        stamps.push(ts);
        stamps
    }

    /// Writes several lines; returns the first-record timestamp of each.
    pub fn write_lines<S: AsRef<[u8]>>(
        &mut self,
        stream: Stream,
        lines: impl IntoIterator<Item = S>,
    ) -> Vec<i64> {
        lines
            .into_iter()
            .map(|l| self.write_line(stream, l))
            .collect()
    }

    /// One `P` record (no `F` follows yet): what containerd writes for output that ends
    /// without a newline when the stream closes, or the first part of a long line.
    pub fn write_partial(&mut self, stream: Stream, content: impl AsRef<[u8]>) -> i64 {
        let ts = self.clock.next();
        self.write_record(ts, stream, "P", content.as_ref());
        ts
    }

    /// Appends bytes as they are, in one `write(2)`.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.file
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.current_path().display()));
    }

    /// `fsync` the file being written.
    pub fn sync(&self) {
        let _ = self.file.sync_all();
    }

    /// Size of the current file on disk.
    pub fn size(&self) -> u64 {
        fs::metadata(self.current_path())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Rotated files of the current `N.log` (`N.log.*`), sorted oldest first.
    pub fn rotated_files(&self) -> Vec<PathBuf> {
        rotated_files_in(&self.dir, self.restart)
    }

    /// kubelet's `containerLogMaxFiles` (see [`set_max_files`](Self::set_max_files)).
    pub fn max_files(&self) -> usize {
        self.max_files
    }

    /// Every file in the container directory, sorted by name.
    pub fn all_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// kubelet's full rotation: [`compress_rotated`](Self::compress_rotated), then
    /// [`rotate_rename`](Self::rotate_rename), then containerd's [`reopen`](Self::reopen).
    /// Returns the path the old `N.log` was renamed to.
    pub fn rotate(&mut self) -> PathBuf {
        self.compress_rotated();
        let rotated = self.rotate_rename();
        self.reopen();
        rotated
    }

    /// kubelet's steps before the rename: remove `.tmp` leftovers and uncompressed files that
    /// already have a `.gz`, remove the oldest so that at most `max_files - 2` rotated files
    /// remain, and gzip every uncompressed one (`X` → `X.tmp` → rename to `X.gz`, remove `X`).
    pub fn compress_rotated(&mut self) {
        compress_rotated_in(&self.dir, self.restart, self.max_files);
    }

    /// Renames `N.log` to `N.log.<YYYYMMDD-HHMMSS>` (unique, increasing). Until
    /// [`reopen`](Self::reopen), writes still go to the renamed inode, as containerd's do.
    pub fn rotate_rename(&mut self) -> PathBuf {
        let mut secs = unix_now_ns().div_euclid(NS_PER_SEC);
        if secs <= self.last_rotation_secs {
            secs = self.last_rotation_secs + 1;
        }
        let current = self.current_path();
        let mut rotated;
        loop {
            rotated = self
                .dir
                .join(format!("{}.log.{}", self.restart, rotation_suffix(secs)));
            let gz = PathBuf::from(format!("{}.gz", rotated.display()));
            if !rotated.exists() && !gz.exists() {
                break;
            }
            secs += 1;
        }
        self.last_rotation_secs = secs;
        fs::rename(&current, &rotated).unwrap_or_else(|e| {
            panic!("rename {} -> {}: {e}", current.display(), rotated.display())
        });
        rotated
    }

    /// containerd's `ReopenContainerLog`: a fresh `N.log`, written from now on.
    pub fn reopen(&mut self) {
        self.file = open_append(&self.current_path());
    }

    /// Truncates `N.log` to 0 in place (the handle keeps appending, now from offset 0).
    pub fn truncate(&mut self) {
        self.file
            .set_len(0)
            .unwrap_or_else(|e| panic!("truncate {}: {e}", self.current_path().display()));
    }

    /// logrotate's `copytruncate`: copies `N.log` to `N.log.<suffix>`, then truncates it in
    /// place. Returns the copy's path.
    pub fn copytruncate(&mut self) -> PathBuf {
        self.copy_then_truncate(".")
    }

    /// logrotate's `copytruncate` with `dateext` (`dateformat -%Y%m%d-%H%M%S`): copies `N.log`
    /// to `N.log-<suffix>`, then truncates it in place. Unlike
    /// [`copytruncate`](Self::copytruncate), whose `N.log.<suffix>` copy is named like a kubelet
    /// rotation and so is read as one, a collector of kubelet logs does not read this copy: what
    /// it had not read of `N.log` before the truncation is gone for it. Returns the copy's path.
    pub fn copytruncate_dateext(&mut self) -> PathBuf {
        self.copy_then_truncate("-")
    }

    fn copy_then_truncate(&mut self, sep: &str) -> PathBuf {
        let mut secs = unix_now_ns().div_euclid(NS_PER_SEC);
        if secs <= self.last_rotation_secs {
            secs = self.last_rotation_secs + 1;
        }
        self.last_rotation_secs = secs;
        let copy = self.dir.join(format!(
            "{}.log{sep}{}",
            self.restart,
            rotation_suffix(secs)
        ));
        fs::copy(self.current_path(), &copy)
            .unwrap_or_else(|e| panic!("copy to {}: {e}", copy.display()));
        self.truncate();
        copy
    }

    /// The container restarts: containerd writes `(N+1).log` from now on; `N.log` stays.
    /// Returns the new path.
    pub fn restart(&mut self) -> PathBuf {
        self.restart += 1;
        self.reopen();
        self.current_path()
    }

    /// kubelet's `Clean` when the container is removed: deletes `N.log*` of every restart.
    pub fn remove_all(&self) {
        for p in self.all_files() {
            if p.is_file() {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

/// Rotated files of `<dir>/<restart>.log` (`N.log.*`), sorted oldest first.
pub fn rotated_files_in(dir: &Path, restart: u32) -> Vec<PathBuf> {
    let prefix = format!("{restart}.log.");
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// [`ContainerLog::compress_rotated`] on paths alone, for a "kubelet" that runs beside the
/// writer without holding it (containerd never waits for kubelet's gzip). Returns the files it
/// compressed (their names before compression).
pub fn compress_rotated_in(dir: &Path, restart: u32, max_files: usize) -> Vec<PathBuf> {
    let mut logs = Vec::new();
    for p in rotated_files_in(dir, restart) {
        let name = p.to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(&p);
            continue;
        }
        if !name.ends_with(".gz") && Path::new(&format!("{name}.gz")).exists() {
            let _ = fs::remove_file(&p);
            continue;
        }
        logs.push(p);
    }
    logs.sort();
    let keep = max_files.saturating_sub(2);
    let excess = logs.len().saturating_sub(keep);
    for p in logs.drain(..excess) {
        fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }
    let mut compressed = Vec::new();
    for p in logs {
        if p.extension().is_some_and(|e| e == "gz") {
            continue;
        }
        gzip_like_kubelet(&p);
        compressed.push(p);
    }
    compressed
}

fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// `X` → gzip into `X.tmp` → rename to `X.gz` → remove `X` (kubelet's `compressLog`).
fn gzip_like_kubelet(path: &Path) {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let out = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    let status = Command::new("gzip")
        .arg("-c")
        .arg("-n")
        .arg(path)
        .stdout(out)
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("spawn gzip: {e}"));
    assert!(
        status.success(),
        "gzip -c {} failed: {status}",
        path.display()
    );
    fs::rename(&tmp, &gz)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), gz.display()));
    fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
}

/// Decompresses a `.gz` file with `gzip -dc` (for assertions).
pub fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("spawn gzip: {e}"));
    assert!(
        out.status.success(),
        "gzip -dc {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Splits CRI file content into records `(ts, stream, tag, content)` (for assertions).
pub fn parse_cri(data: &[u8]) -> Vec<(String, String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(4, |&b| b == b' ');
        let ts = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let stream = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let tag = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let content = parts.next().unwrap_or_default().to_vec();
        out.push((ts, stream, tag, content));
    }
    out
}
