//! The systemd journal as a source (`logs.journal`): the node's journal files, read through
//! libsystemd's sd-journal API on a thread of their own, in chunks, and followed.
//!
//! Why these choices:
//! - **libsystemd, through the `systemd` crate.** The journal's file format (hash tables, entry
//!   arrays, zstd/lz4/xz compression, files rotated and vacuumed under the reader) is
//!   libsystemd's to interpret; `sd_journal_next` interleaves all files of the directory in time
//!   order and keeps its place across rotation. The `sd-journal` crate is not used: it reads past
//!   the end of field values and mangles compressed ones.
//! - **One pass over each entry's fields, no map.** An entry has 15 to 30 fields; only
//!   `MESSAGE`, `PRIORITY`, `_SYSTEMD_UNIT`, `SYSLOG_IDENTIFIER` and `_PID` reach Loki
//!   (contract §1). They are picked out of one `sd_journal_enumerate_data` pass by their name
//!   prefix and copied into reused buffers; no per-entry map or `String` is built. Not five
//!   `sd_journal_get_data` calls: each one walks the entry's items from the start and loads
//!   every data object on its way, so on journald-like entries (~20 fields) the crate alone
//!   read 0.22M entries/s that way against 0.68M/s with one enumeration (`benches/journal.rs`).
//!   The data threshold is set just above `max_line_size`: a huge compressed message is
//!   decompressed only as far as it will be sent (other compressed fields, rare and small,
//!   are decompressed too, up to the same bound).
//! - **Chunks of up to [`MAX_ENTRIES`] entries or [`MAX_BYTES`] bytes.** A chunk carries one
//!   label set per (unit, level) seen in it, interned here so that the chunk finds them by
//!   pointer. Its position is the cursor of its last entry, taken once per chunk: taking it per
//!   entry (a formatted, allocated string) cost 15–20 % of the throughput on the bench.
//! - **Start.** Without a committed cursor, at now − `max_age`. With one, on the cursor's entry
//!   (`test_cursor` checks it is really that entry), so that the first read is the entry after
//!   it: nothing lost, the cursor's entry not sent twice. A cursor whose entry journald vacuumed
//!   (ringtail down or behind) resumes at the oldest entry still there, and what was lost in
//!   between is logged and counted: its span from the two entries' times, and how many entries
//!   from their sequence numbers when both are in one sequence (journald's own files are). A
//!   cursor that does not parse, or is older than `max_age`, starts at now − `max_age`, with
//!   one log line saying why.
//! - **Following.** At the end of the journal the writer is told this source is idle (so it
//!   flushes at once), then `sd_journal_wait` waits up to [`WAIT`] for inotify to report new
//!   entries or new files, and reading goes on: whatever another process appends shows up
//!   within that. Rotation (rename to `…@….journal`) and vacuuming are libsystemd's business;
//!   its read position survives them. Where libsystemd cannot get an inotify instance
//!   (`fs.inotify.max_user_instances` used up), the wait fails: ringtail then polls every
//!   [`WAIT`] (appends are seen) and opens the directory again every [`REOPEN_EVERY`] at the
//!   entry it is on, which is how new journal files are found; each new journal tries inotify
//!   again. Both are counted (`journal_wait_failed`, `journal_reopened`) and logged.
//! - **Errors.** A journal directory that cannot be opened (a node without a persistent journal)
//!   gets one info line and is tried again every [`REOPEN_EVERY`]. Journal files it may not read
//!   are skipped by libsystemd without a word, so they are checked once at start and named in a
//!   warning. Read errors are logged at most once a minute and counted; nothing from the outside
//!   world is unwrapped.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use systemd::journal::{Journal, OpenDirectoryOptions};

use crate::config::{self, JsonLine};
use crate::entry::{Advance, Chunk, LabelSet, MetaKey};
use crate::process::Processor;
use crate::ring::RingTx;
use crate::shutdown::Stop;
use crate::telemetry::metrics::{Metrics, METRICS};
use crate::timefmt::{format_rfc3339_ns, now_ns};

/// The persistent journal: `logs.journal.path`'s default.
pub const DEFAULT_PATH: &str = "/var/log/journal";
/// The volatile journal, read too when the path is the default one and it exists.
pub const RUNTIME_PATH: &str = "/run/log/journal";
/// Entries per chunk, at most.
pub const MAX_ENTRIES: usize = 1000;
/// A chunk is sent once its buffer holds this much (lines and metadata values).
pub const MAX_BYTES: usize = 128 << 10;
/// Longest wait for the journal to change; also how soon a stop is noticed while idle.
pub const WAIT: Duration = Duration::from_millis(500);
/// How often a journal that cannot be opened is tried again.
pub const REOPEN_EVERY: Duration = Duration::from_secs(5);
/// Distinct units whose label sets are kept; past it the cache starts over.
const MAX_UNITS: usize = 4096;
/// Longest `unit` label value (Loki's limit is 2,048 bytes; identifiers are short).
const MAX_UNIT_LEN: usize = 1024;
/// How often a repeated read error is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Syslog priority keywords, as the seed's queries use them (contract §1): 3 is `err`.
pub const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// Reads the journal until `stop`: opens it (waiting for it if it cannot be opened yet),
/// starts after `cursor` (or at now − `max_age`), then sends chunks into `ring` and follows.
pub fn run(
    cfg: &config::Journal,
    node: &str,
    cursor: Option<String>,
    max_line: usize,
    mut ring: RingTx,
    stop: &Stop,
) {
    let dirs = directories(cfg);
    let shown = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    let mut told = false;
    let mut reader = loop {
        if stop.stopping() {
            return;
        }
        match Reader::open(&dirs, node, max_line) {
            Ok(r) => break r,
            Err(e) => {
                if !told {
                    log::info!(
                        "logs.journal: cannot open the journal in {shown} yet ({e}); trying \
                         again every {}s",
                        REOPEN_EVERY.as_secs()
                    );
                    told = true;
                }
                sleep_unless_stopping(REOPEN_EVERY, stop);
            }
        }
    };
    if let Some((bad, all, first)) = unreadable_files(&dirs) {
        log::warn!(
            "logs.journal: {bad} of {all} journal files cannot be read ({first}); libsystemd \
             skips them silently, so their entries are not collected: give ringtail the \
             systemd-journal group or CAP_DAC_READ_SEARCH"
        );
    }
    let start = reader.start(cursor.as_deref(), cfg.max_age.0);
    match start {
        // Entries may be skipped (or sent again): say it louder.
        Start::MaxAge { reason: Some(_) } => {
            log::warn!("logs.journal: reading the journal in {shown}, {start}")
        }
        _ => log::info!("logs.journal: reading the journal in {shown}, {start}"),
    }
    let mut last_warn: Option<Instant> = None;
    let mut reopened = Instant::now();
    while !stop.stopping() {
        let mut chunk = ring.chunk(reader.recent_labels());
        let filled = reader.fill(&mut chunk);
        if chunk.entries.is_empty() {
            ring.recycle(chunk);
        } else {
            ring.set_busy(true);
            if !ring.send(chunk, stop) {
                return;
            }
        }
        match filled {
            Ok(Fill::Full) => {}
            Ok(Fill::End) => {
                ring.set_busy(false);
                if let Err(e) = reader.wait(WAIT) {
                    // No inotify for libsystemd: appends are read on the next poll, but new
                    // journal files are found only by opening the directory again.
                    METRICS.file_event("journal_wait_failed");
                    if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        log::warn!(
                            "logs.journal: cannot wait for journal changes ({e}); polling every \
                             {}ms and reopening {shown} every {}s to find new journal files. \
                             Raise fs.inotify.max_user_instances (or max_user_watches)",
                            WAIT.as_millis(),
                            REOPEN_EVERY.as_secs()
                        );
                        last_warn = Some(Instant::now());
                    }
                    sleep_unless_stopping(WAIT, stop);
                    if reopened.elapsed() >= REOPEN_EVERY {
                        reopened = Instant::now();
                        METRICS.file_event("journal_reopened");
                        match reader.reopen(&dirs, cfg.max_age.0) {
                            Ok(Start::AfterCursor) => {}
                            Ok(start) => log::warn!("logs.journal: reopened {shown}, {start}"),
                            Err(e) => log::warn!(
                                "logs.journal: cannot reopen {shown} ({e}); reading the files \
                                 already open, trying again in {}s",
                                REOPEN_EVERY.as_secs()
                            ),
                        }
                    }
                }
            }
            Err(e) => {
                ring.set_busy(false);
                METRICS.file_event("journal_read_error");
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    log::warn!("logs.journal: reading the journal failed ({e}); retrying");
                    last_warn = Some(Instant::now());
                }
                sleep_unless_stopping(Duration::from_secs(1), stop);
            }
        }
    }
}

/// The directories to read: the configured one, plus the volatile journal when the path is the
/// default and `/run/log/journal` exists.
pub fn directories(cfg: &config::Journal) -> Vec<PathBuf> {
    let mut dirs = vec![cfg.path.clone()];
    if cfg.path == Path::new(DEFAULT_PATH) && Path::new(RUNTIME_PATH).is_dir() {
        dirs.push(PathBuf::from(RUNTIME_PATH));
    }
    dirs
}

/// Journal files in `dirs` (and their machine-ID subdirectories) that cannot be opened for
/// reading: how many, of how many, and the first one's error. `None` when all can be read.
fn unreadable_files(dirs: &[PathBuf]) -> Option<(usize, usize, String)> {
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(sub) = std::fs::read_dir(&path) {
                    files.extend(sub.flatten().map(|e| e.path()));
                }
            } else {
                files.push(path);
            }
        }
    }
    let journals = files.iter().filter(|p| {
        p.extension()
            .is_some_and(|x| x == "journal" || x == "journal~")
    });
    let (mut all, mut bad, mut first) = (0, 0, None);
    for p in journals {
        all += 1;
        if let Err(e) = std::fs::File::open(p) {
            bad += 1;
            first.get_or_insert_with(|| format!("{}: {e}", p.display()));
        }
    }
    first.map(|f| (bad, all, f))
}

fn sleep_unless_stopping(d: Duration, stop: &Stop) {
    let until = Instant::now() + d;
    while !stop.stopping() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Why [`Reader::fill`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// The chunk is full; there may be more to read right away.
    Full,
    /// The end of the journal: nothing more until it changes.
    End,
}

/// Where [`Reader::start`] put the read position, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// After the committed cursor's entry.
    AfterCursor,
    /// At now − `max_age`: there was no cursor, or it could not be used (the reason).
    MaxAge { reason: Option<String> },
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::AfterCursor => f.write_str("resuming after the committed cursor"),
            Start::MaxAge { reason: None } => {
                f.write_str("starting at now - max_age (no committed cursor)")
            }
            Start::MaxAge { reason: Some(r) } => write!(f, "starting at now - max_age: {r}"),
        }
    }
}

/// Which of the wanted fields the current entry has (and its priority, when 0–7).
#[derive(Clone, Copy, Debug, Default)]
struct Found {
    message: bool,
    unit: bool,
    ident: bool,
    pid: bool,
    level: Option<u8>,
}

/// The wanted field values of the current entry, copied out of libsystemd's buffer (each
/// enumeration step invalidates the last one). Reused from entry to entry.
#[derive(Default)]
struct Scratch {
    message: Vec<u8>,
    unit: Vec<u8>,
    ident: Vec<u8>,
    pid: Vec<u8>,
}

impl Scratch {
    /// One pass over the current entry's fields, keeping the first value of each wanted one.
    /// Empty values count as absent, except `MESSAGE` (an empty line is still a line).
    fn collect(&mut self, j: &mut Journal) -> Found {
        let mut f = Found::default();
        let mut priority = false;
        j.restart_data();
        // Bad data objects are skipped by libsystemd; another error ends the entry's fields.
        while let Ok(Some(field)) = j.enumerate_data() {
            let d = field.data();
            match d.first() {
                Some(b'M') if !f.message => {
                    if let Some(v) = d.strip_prefix(b"MESSAGE=") {
                        self.message.clear();
                        self.message.extend_from_slice(v);
                        f.message = true;
                    }
                }
                Some(b'P') if !priority => {
                    if let Some(v) = d.strip_prefix(b"PRIORITY=") {
                        priority = true;
                        f.level = match v {
                            [p @ b'0'..=b'7'] => Some(p - b'0'),
                            _ => None,
                        };
                    }
                }
                Some(b'S') if !f.ident => {
                    if let Some(v) = d.strip_prefix(b"SYSLOG_IDENTIFIER=") {
                        f.ident = copy_value(v, &mut self.ident);
                    }
                }
                Some(b'_') => {
                    if let Some(v) = d.strip_prefix(b"_SYSTEMD_UNIT=") {
                        if !f.unit {
                            f.unit = copy_value(v, &mut self.unit);
                        }
                    } else if let Some(v) = d.strip_prefix(b"_PID=") {
                        if !f.pid {
                            f.pid = copy_value(v, &mut self.pid);
                        }
                    }
                }
                _ => {}
            }
        }
        f
    }
}

fn copy_value(v: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.extend_from_slice(v);
    !v.is_empty()
}

/// An open journal and what turns its entries into chunk entries. Not `Send`: libsystemd's
/// handle stays on the thread that opened it.
pub struct Reader {
    journal: Journal,
    max_line: usize,
    labels: Labels,
    proc: Processor,
    scratch: Scratch,
    read_lines: Counter,
    read_bytes: Counter,
    no_message: Counter,
}

impl Reader {
    /// Opens the journal files in `dirs` (one directory, or the default pair) for entries of
    /// `node`; lines longer than `max_line` are cut.
    pub fn open(dirs: &[PathBuf], node: &str, max_line: usize) -> Result<Reader, String> {
        Ok(Reader {
            journal: open_journal(dirs, max_line).map_err(|e| e.to_string())?,
            max_line,
            labels: Labels::new(node),
            proc: Processor::new(JsonLine::Raw, max_line),
            scratch: Scratch::default(),
            read_lines: Metrics::source_counter(&METRICS.read_lines, "journal"),
            read_bytes: Metrics::source_counter(&METRICS.read_bytes, "journal"),
            no_message: METRICS
                .file_events
                .get_or_create(&vec![("event", "journal_no_message".to_string())])
                .clone(),
        })
    }

    /// Puts the read position after `cursor`'s entry, or at now − `max_age` when there is no
    /// cursor or it cannot be used (logged by the caller through the returned [`Start`]).
    pub fn start(&mut self, cursor: Option<&str>, max_age: Duration) -> Start {
        let max_age_us = u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX);
        let now_us = u64::try_from(now_ns() / 1000).unwrap_or(0);
        let cutoff_us = now_us.saturating_sub(max_age_us);
        let reason = match cursor {
            None => None,
            Some(c) => match self.seek_after(c, cutoff_us) {
                Ok(()) => return Start::AfterCursor,
                Err(why) => Some(why),
            },
        };
        if let Err(e) = self.journal.seek_realtime_usec(cutoff_us) {
            log::warn!("logs.journal: cannot seek to now - max_age ({e}); reading from the start");
            let _ = self.journal.seek_head();
        }
        Start::MaxAge { reason }
    }

    /// Moves onto `cursor`'s entry, so that the next read is the entry after it.
    fn seek_after(&mut self, cursor: &str, cutoff_us: u64) -> Result<(), String> {
        let j = &mut self.journal;
        j.seek_cursor(cursor)
            .map_err(|e| format!("the committed cursor {cursor:?} is not usable ({e})"))?;
        match j.next() {
            Ok(0) => {
                return Err(format!(
                    "the committed cursor's entry is no longer in the journal ({cursor})"
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("cannot read at the committed cursor ({e})")),
        }
        match j.test_cursor(cursor) {
            Ok(true) => {}
            Ok(false) => {
                // The cursor's entry was vacuumed, but the journal places a seek to it just
                // before the first entry after where it was: resume there (seek again, so the
                // next read is that entry) rather than re-send everything since now - max_age.
                let next = j.cursor().ok().as_deref().and_then(Mark::parse);
                report_vacuumed(cursor, Mark::parse(cursor), next);
                j.seek_cursor(cursor)
                    .map_err(|e| format!("the committed cursor {cursor:?} is not usable ({e})"))?;
                return Ok(());
            }
            Err(e) => {
                return Err(format!(
                    "the committed cursor {cursor:?} is not usable ({e})"
                ))
            }
        }
        let ts = j
            .timestamp_usec()
            .map_err(|e| format!("cannot read the committed cursor's entry ({e})"))?;
        if ts < cutoff_us {
            let mut at = String::new();
            format_rfc3339_ns(i64::try_from(ts).unwrap_or(0).saturating_mul(1000), &mut at);
            return Err(format!(
                "the committed cursor's entry ({at}) is older than logs.journal.max_age"
            ));
        }
        Ok(())
    }

    /// Opens `dirs` again and moves onto the entry the reader is on (the last one read), so
    /// that reading goes on after it, now in every journal file there: how new files are found
    /// when libsystemd cannot watch the directory. Before any entry was read, it starts at
    /// now − `max_age` again. The old journal stays in use when the directory cannot be opened.
    pub fn reopen(&mut self, dirs: &[PathBuf], max_age: Duration) -> Result<Start, String> {
        let journal = open_journal(dirs, self.max_line).map_err(|e| e.to_string())?;
        let at = self.journal.cursor().ok();
        self.journal = journal;
        Ok(self.start(at.as_deref(), max_age))
    }

    /// The label set a new chunk starts with: the one of the last entry read.
    pub fn recent_labels(&self) -> Arc<LabelSet> {
        self.labels.recent.clone()
    }

    /// Appends the next entries to `chunk` until it is full or the journal ends, and sets its
    /// advance to the cursor of the last entry read. Entries without `MESSAGE` are skipped and
    /// counted.
    pub fn fill(&mut self, chunk: &mut Chunk) -> Result<Fill, systemd::Error> {
        let before = self.proc.counts;
        let mut bytes = 0u64;
        let result = loop {
            if chunk.entries.len() >= MAX_ENTRIES || chunk.data.len() >= MAX_BYTES {
                break Ok(Fill::Full);
            }
            match self.journal.next() {
                Ok(0) => break Ok(Fill::End),
                Ok(_) => bytes += self.read_entry(chunk),
                Err(e) => break Err(e),
            }
        };
        self.proc.end_chunk();
        if !chunk.entries.is_empty() {
            // The journal is still on the last entry read: `next` at the end, or failing,
            // does not move it.
            match self.journal.cursor() {
                Ok(cursor) => chunk.advance = Some(Advance::Journal { cursor }),
                Err(e) => log::debug!("journal: no cursor for a chunk ({e}); not committed"),
            }
        }
        let after = self.proc.counts;
        self.read_lines.inc_by(after.lines - before.lines);
        self.read_bytes.inc_by(bytes);
        METRICS.add_line_counts(before, after);
        result
    }

    /// Waits up to `d` for the journal to change.
    pub fn wait(&mut self, d: Duration) -> Result<(), systemd::Error> {
        self.journal.wait(Some(d)).map(|_| ())
    }

    /// Appends the current entry to `chunk`; returns its `MESSAGE` bytes.
    fn read_entry(&mut self, chunk: &mut Chunk) -> u64 {
        let Reader {
            journal,
            labels,
            proc,
            scratch,
            no_message,
            ..
        } = self;
        let ts_ns = match journal.timestamp_usec() {
            Ok(us) => i64::try_from(us).unwrap_or(i64::MAX).saturating_mul(1000),
            Err(_) => now_ns(),
        };
        let f = scratch.collect(journal);
        if !f.message {
            no_message.inc();
            return 0;
        }
        let unit: &[u8] = if f.unit {
            &scratch.unit
        } else if f.ident {
            &scratch.ident
        } else {
            b""
        };
        let idx = chunk.label_index(labels.get(unit, f.level));
        proc.fielded_line(
            chunk,
            idx,
            ts_ns,
            &scratch.message,
            &[
                (MetaKey::Pid, f.pid.then_some(&scratch.pid[..])),
                (
                    MetaKey::SyslogIdentifier,
                    f.ident.then_some(&scratch.ident[..]),
                ),
            ],
        );
        scratch.message.len() as u64
    }
}

/// Opens one directory, or both default ones (with libsystemd's `SD_JOURNAL_OS_ROOT` on `/`,
/// which reads exactly `/var/log/journal` and `/run/log/journal`).
/// Opens the journal files in `dirs`, decompressing values only as far as a line of
/// `max_line` bytes needs.
fn open_journal(dirs: &[PathBuf], max_line: usize) -> Result<Journal, systemd::Error> {
    let existing: Vec<&PathBuf> = dirs.iter().filter(|d| d.is_dir()).collect();
    let mut journal = match existing.as_slice() {
        [one] => OpenDirectoryOptions::default().open_directory(one.as_os_str().as_bytes()),
        [_, _, ..] => OpenDirectoryOptions::default()
            .os_root(true)
            .open_directory("/"),
        // None exists: let libsystemd say why for the configured one (ENOENT, EACCES…).
        [] => {
            let first = dirs
                .first()
                .map_or(Path::new(DEFAULT_PATH), |p| p.as_path());
            OpenDirectoryOptions::default().open_directory(first.as_os_str().as_bytes())
        }
    }?;
    // What is sent, plus one byte to tell that the message was longer ("MESSAGE=" is 8 bytes).
    journal.set_data_threshold(max_line.saturating_add(9))?;
    Ok(journal)
}

/// Interned label sets, one per (unit, level): chunks compare them by pointer.
struct Labels {
    node: String,
    /// Per unit value (as in the journal): the set for each level 0–7, and for no level (8).
    by_unit: HashMap<Vec<u8>, [Option<Arc<LabelSet>>; 9]>,
    /// The last set handed out.
    recent: Arc<LabelSet>,
}

impl Labels {
    fn new(node: &str) -> Labels {
        Labels {
            node: node.to_string(),
            by_unit: HashMap::new(),
            recent: make_labels(node, b"", None),
        }
    }

    fn get(&mut self, unit: &[u8], level: Option<u8>) -> &Arc<LabelSet> {
        // The label is cut to MAX_UNIT_LEN anyway: so is the cache key, so that huge
        // identifiers cannot grow the cache.
        let unit = &unit[..unit.len().min(MAX_UNIT_LEN)];
        let slot = level.map_or(8, usize::from).min(8);
        let cached = self.by_unit.get(unit).and_then(|sets| sets[slot].as_ref());
        match cached {
            Some(set) => {
                if !Arc::ptr_eq(set, &self.recent) {
                    self.recent = set.clone();
                }
            }
            None => {
                if self.by_unit.len() >= MAX_UNITS && !self.by_unit.contains_key(unit) {
                    self.by_unit.clear();
                }
                let set = make_labels(&self.node, unit, level);
                self.by_unit.entry(unit.to_vec()).or_default()[slot] = Some(set.clone());
                self.recent = set;
                let streams = self.by_unit.values().flatten().flatten().count();
                METRICS.streams("journal", streams);
            }
        }
        &self.recent
    }
}

fn make_labels(node: &str, unit: &[u8], level: Option<u8>) -> Arc<LabelSet> {
    let mut unit = String::from_utf8_lossy(unit).into_owned();
    if unit.len() > MAX_UNIT_LEN {
        let mut cut = MAX_UNIT_LEN;
        while !unit.is_char_boundary(cut) {
            cut -= 1;
        }
        unit.truncate(cut);
    }
    let level = level
        .and_then(|l| LEVELS.get(usize::from(l)))
        .map_or(String::new(), |l| l.to_string());
    LabelSet::new([
        ("source", "journal".to_string()),
        ("unit", unit),
        ("node", node.to_string()),
        ("level", level),
        ("job", "journal".to_string()),
    ])
}

/// Where an entry is in the journal, from its cursor: `s=<seqnum id>;i=<seqnum>;…;t=<realtime>`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mark {
    seqnum_id: String,
    seqnum: u64,
    realtime_us: u64,
}

impl Mark {
    fn parse(cursor: &str) -> Option<Mark> {
        let field = |name: &str| {
            cursor
                .split(';')
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        };
        Some(Mark {
            seqnum_id: field("s")?.to_string(),
            seqnum: u64::from_str_radix(field("i")?, 16).ok()?,
            realtime_us: u64::from_str_radix(field("t")?, 16).ok()?,
        })
    }
}

/// What was lost between the committed cursor's entry (vacuumed) and the oldest entry still
/// there: entries by sequence number when both carry the same sequence id (journald numbers its
/// files in one sequence until it is restarted), and the span of time always.
fn lost_between(committed: &Mark, next: &Mark) -> (Option<u64>, Duration) {
    let entries = (committed.seqnum_id == next.seqnum_id)
        .then(|| next.seqnum.saturating_sub(committed.seqnum + 1));
    let span = Duration::from_micros(next.realtime_us.saturating_sub(committed.realtime_us));
    (entries, span)
}

/// Logs and counts what the journal vacuumed past `cursor` before ringtail read it.
fn report_vacuumed(cursor: &str, committed: Option<Mark>, next: Option<Mark>) {
    let (Some(committed), Some(next)) = (committed, next) else {
        log::warn!(
            "logs.journal: the committed cursor's entry is no longer in the journal (vacuumed: \
             {cursor}); resuming at the oldest entry still there. How much was lost is unknown"
        );
        return;
    };
    let (entries, span) = lost_between(&committed, &next);
    if entries == Some(0) {
        log::info!(
            "logs.journal: the committed cursor's entry was vacuumed after it was shipped \
             ({cursor}); resuming at the next entry, nothing lost"
        );
        return;
    }
    let mut from = String::new();
    let mut to = String::new();
    format_rfc3339_ns(
        i64::try_from(committed.realtime_us)
            .unwrap_or(0)
            .saturating_mul(1000),
        &mut from,
    );
    format_rfc3339_ns(
        i64::try_from(next.realtime_us)
            .unwrap_or(0)
            .saturating_mul(1000),
        &mut to,
    );
    let what = match entries {
        Some(n) => {
            METRICS.journal_lost_entries.inc_by(n);
            format!("{n} entries written between {from} and {to} ({span:.1?}) were lost")
        }
        None => format!(
            "entries written between {from} and {to} ({span:.1?}), if there were any, were lost \
             (the journal's sequence numbers changed, so how many is unknown)"
        ),
    };
    METRICS.journal_lost_seconds.inc_by(span.as_secs_f64());
    log::warn!(
        "logs.journal: the committed cursor's entry is no longer in the journal (vacuumed: \
         {cursor}): {what}. Resuming at the oldest entry still there. Give journald more space \
         (SystemMaxUse=), or keep ringtail running"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vacuumed_gap_is_measured_from_the_cursors() {
        let committed = Mark::parse("s=ab12;i=1f;b=0011;m=3e8;t=5f0a1b2c3d4e5;x=99").unwrap();
        assert_eq!(
            committed,
            Mark {
                seqnum_id: "ab12".into(),
                seqnum: 0x1f,
                realtime_us: 0x5f0a1b2c3d4e5,
            }
        );
        let next = Mark {
            seqnum: 0x1f + 101,
            realtime_us: committed.realtime_us + 90_000_000,
            ..committed.clone()
        };
        assert_eq!(
            lost_between(&committed, &next),
            (Some(100), Duration::from_secs(90))
        );
        // The next entry right after: nothing lost.
        let after = Mark {
            seqnum: 0x20,
            ..next.clone()
        };
        assert_eq!(lost_between(&committed, &after).0, Some(0));
        // Another sequence (journald's numbering restarted): how many is unknown.
        let other = Mark {
            seqnum_id: "cd34".into(),
            ..next
        };
        assert_eq!(lost_between(&committed, &other).0, None);
        for bad in ["", "not a cursor", "s=ab;i=zz;t=1", "s=ab;i=1"] {
            assert_eq!(Mark::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn labels_are_interned_per_unit_and_level() {
        let mut l = Labels::new("n1");
        let a = l.get(b"a.service", Some(3)).clone();
        let b = l.get(b"a.service", Some(3)).clone();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.rendered(),
            r#"{job="journal", level="err", node="n1", source="journal", unit="a.service"}"#
        );
        let c = l.get(b"a.service", None).clone();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(
            c.rendered(),
            r#"{job="journal", node="n1", source="journal", unit="a.service"}"#
        );
        let d = l.get(b"", Some(7)).clone();
        assert_eq!(
            d.rendered(),
            r#"{job="journal", level="debug", node="n1", source="journal"}"#
        );
        assert!(Arc::ptr_eq(&l.recent, &d));
    }

    #[test]
    fn unit_values_are_repaired_and_bounded() {
        let s = make_labels("n", b"bad\xffname", Some(0));
        assert!(s.rendered().contains("unit=\"bad\u{FFFD}name\""));
        assert!(s.rendered().contains("level=\"emerg\""));
        let long = "é".repeat(MAX_UNIT_LEN);
        let s = make_labels("n", long.as_bytes(), None);
        let unit = s.pairs().iter().find(|(k, _)| *k == "unit").map(|p| &p.1);
        assert_eq!(unit.map(String::len), Some(MAX_UNIT_LEN));
    }

    #[test]
    fn unreadable_journal_files_are_found_in_machine_id_directories() {
        let dir = tempfile::tempdir().unwrap();
        let machine = dir.path().join("0123456789abcdef0123456789abcdef");
        std::fs::create_dir(&machine).unwrap();
        std::fs::write(machine.join("system.journal"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let dirs = [dir.path().to_path_buf()];
        assert_eq!(unreadable_files(&dirs), None);
        // A file that cannot be opened (as root too): a dangling link.
        std::os::unix::fs::symlink("/nonexistent", machine.join("user-1000.journal~")).unwrap();
        let (bad, all, first) = unreadable_files(&dirs).unwrap();
        assert_eq!((bad, all), (1, 2));
        assert!(first.contains("user-1000.journal~"), "{first}");
    }

    #[test]
    fn the_runtime_journal_is_added_only_to_the_default_path() {
        let custom = config::Journal {
            path: PathBuf::from("/somewhere/else"),
            ..config::Journal::default()
        };
        assert_eq!(directories(&custom), vec![PathBuf::from("/somewhere/else")]);
        let default = config::Journal::default();
        assert_eq!(directories(&default)[0], PathBuf::from(DEFAULT_PATH));
    }
}
