//! Committed positions: the sink's acks, applied in order, per file.
//!
//! An [`Advance`] `(from, to]` is applied only after Loki answered for its chunk (or the chunk
//! was dropped on purpose, and counted). Each must continue the last one of its file; a gap is a
//! bug, so it is logged and counted, and the newer position is taken anyway. This is the only
//! feedback from the sink: sources read their start positions once, when they start.
//!
//! Events positions are not kept here but on the Lease, where the next holder can read them:
//! they are handed to the events shipper's callback ([`Positions::on_events_ack`]).
//!
//! When the file is written: after every acked batch, so that a `kill -9` re-sends at most the
//! batches in flight (contract §2). Such a write appends only the entries that changed to the
//! changes file; a full snapshot is written at start, at shutdown, after a failed write, and
//! once the changes outgrow the last snapshot (see `store`). That write is not fsynced (the page cache outlives the
//! process); a syncer thread fsyncs the file and its directory within `interval` of it, so a
//! machine crash re-sends at most that much more. The fsync is off the sender's path: on a
//! node's disk (ext4, data=ordered) it can wait for a journal commit that also flushes the logs
//! being written there, and the sender must not hold pushes behind that (on the bench machine
//! the difference was within the noise: BENCHMARKS.md, latency). On nodes with so many files
//! that one write is costly, writes are spaced to at least ten times the CPU time the last one
//! took (at most `interval`), which keeps them under a tenth of the sender's CPU. CPU time, not
//! wall time: on a busy node a write that was preempted, or waited for the page cache, would
//! otherwise space the next one seconds away and widen what a crash re-sends (the kill -9 storm
//! test saw 3 s). After a failed write (disk full) the next try waits `interval`, so a broken
//! disk costs one error line a second, not one per batch.

pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::entry::{Advance, AdvanceKind, EventsPos, FileAdvance, FileKey};
use crate::sources::files::recover::Recovery;
use crate::telemetry::metrics::METRICS;
use store::FilePos;

/// Committed file offsets, for discovery's `ringtail_read_lag_bytes` (file size minus committed
/// offset). Updated on every ack, so the lag is right even while the positions file cannot be
/// written.
#[derive(Default)]
pub struct Committed(Mutex<HashMap<FileKey, u64>>);

impl Committed {
    pub fn offsets(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where acked Events positions go (the events shipper, which writes them on the Lease).
pub type EventsAck = Box<dyn FnMut(&EventsPos) + Send>;

pub struct Positions {
    dir: PathBuf,
    files: HashMap<FileKey, Entry>,
    /// `files` in the order they are written (path bytes, inode); rebuilt when a file comes,
    /// goes or changes path, not on every write.
    order: Vec<FileKey>,
    order_stale: bool,
    /// The journal's cursor of the last acked entry.
    journal_cursor: Option<String>,
    events_ack: Option<EventsAck>,
    committed: Arc<Committed>,
    /// `ringtail_positions_commits_total` per source, fetched once each.
    commits: Vec<(&'static str, prometheus_client::metrics::counter::Counter)>,
    /// Changed since the last write.
    dirty: bool,
    failing: bool,
    last_write: Instant,
    /// CPU time the last write took on the sender's thread.
    last_write_cpu: Duration,
    interval: Duration,
    /// Started at the first plain write.
    syncer: Option<Arc<Syncer>>,
    /// The changes file, appended to between snapshots; `None`: the next write is a snapshot
    /// (at start, and after a failed write).
    changes: Option<std::fs::File>,
    changes_len: u64,
    /// Bytes of the last snapshot: the changes file is folded into a new one once it is larger.
    snapshot_len: u64,
    /// Files whose position changed since the last write (their `Entry::changed` is set).
    changed: Vec<FileKey>,
    /// Files let go since the last write.
    gone: Vec<FileKey>,
    journal_changed: bool,
    /// The next append, reused.
    buf: Vec<u8>,
}

/// The changes file is folded into a snapshot once it is larger than the snapshot, or this.
const MIN_CHANGES: u64 = 64 << 10;

/// A file's position and its rendered JSON ([`store::render`]), empty while to render.
struct Entry {
    pos: FilePos,
    json: Vec<u8>,
    /// The path cannot be rendered (not UTF-8); said once, tried again if the path changes.
    unrenderable: bool,
    /// Listed in `Positions::changed`.
    changed: bool,
}

impl Entry {
    fn new(pos: FilePos) -> Entry {
        Entry {
            pos,
            json: Vec::new(),
            unrenderable: false,
            changed: false,
        }
    }
}

/// Asks the syncer thread for an fsync of the positions file.
#[derive(Default)]
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// A write waits for its fsync.
    requested: bool,
    /// The owner is gone: the thread ends.
    closed: bool,
}

impl Syncer {
    fn start(dir: PathBuf, interval: Duration) -> std::io::Result<Arc<Syncer>> {
        let syncer = Arc::new(Syncer::default());
        let s = syncer.clone();
        std::thread::Builder::new()
            .name("positions-sync".into())
            .spawn(move || s.run(&dir, interval))?;
        Ok(syncer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self) {
        self.lock().requested = true;
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// At most one fsync per `interval`, each covering every write before it.
    fn run(&self, dir: &std::path::Path, interval: Duration) {
        loop {
            {
                let mut st = self.lock();
                while !st.requested && !st.closed {
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.closed {
                    return;
                }
                st.requested = false;
            }
            if let Err(e) = store::sync(dir) {
                METRICS.positions_errors.inc();
                log::error!(
                    "cannot fsync {}: {e}; the positions written are safe from a crash of \
                     ringtail but not of the machine. Check data_dir's disk",
                    dir.join(store::FILE_NAME).display()
                );
            }
            std::thread::sleep(interval);
        }
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        if let Some(s) = &self.syncer {
            s.close();
        }
    }
}

impl Positions {
    /// Starts from what was loaded; `interval` bounds how long a written position stays
    /// without fsync.
    pub fn new(dir: PathBuf, loaded: &store::Loaded, interval: Duration) -> Positions {
        Positions {
            dir,
            files: loaded
                .files
                .iter()
                .map(|p| (p.key(), Entry::new(p.clone())))
                .collect(),
            order: Vec::new(),
            order_stale: true,
            journal_cursor: loaded.journal_cursor.clone(),
            events_ack: None,
            committed: Arc::new(Committed(Mutex::new(
                loaded.files.iter().map(|p| (p.key(), p.offset)).collect(),
            ))),
            commits: Vec::new(),
            dirty: false,
            failing: false,
            last_write: Instant::now(),
            last_write_cpu: Duration::ZERO,
            interval,
            syncer: None,
            changes: None,
            changes_len: 0,
            snapshot_len: 0,
            changed: Vec::new(),
            gone: Vec::new(),
            journal_changed: false,
            buf: Vec::new(),
        }
    }

    /// The committed offsets, shared with discovery.
    pub fn committed(&self) -> Arc<Committed> {
        self.committed.clone()
    }

    /// Where acked Events positions go.
    pub fn on_events_ack(&mut self, f: EventsAck) {
        self.events_ack = Some(f);
    }

    /// Applies one acked advance.
    pub fn apply(&mut self, a: &Advance) {
        let source = a.source();
        match self.commits.iter().find(|(s, _)| *s == source) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                let c = METRICS.positions_committed(source);
                c.inc();
                self.commits.push((source, c));
            }
        }
        match a {
            Advance::File(f) => self.apply_file(f),
            Advance::Journal { cursor } => {
                self.journal_cursor = Some(cursor.clone());
                self.journal_changed = true;
            }
            Advance::Events(p) => {
                if let Some(f) = &mut self.events_ack {
                    f(p);
                }
                return;
            }
        }
        self.dirty = true;
    }

    fn apply_file(&mut self, a: &FileAdvance) {
        if a.kind == AdvanceKind::Done {
            if self.files.remove(&a.file).is_some() {
                self.gone.push(a.file);
            }
            self.committed.offsets().remove(&a.file);
            self.order_stale = true;
            return;
        }
        let entry = self.files.entry(a.file).or_insert_with(|| {
            self.order_stale = true;
            Entry::new(FilePos {
                path: a.path.to_path_buf(),
                dev: a.file.dev,
                ino: a.file.ino,
                fp_len: 0,
                fp_hash: 0,
                offset: a.from,
            })
        });
        let p = &mut entry.pos;
        if a.kind == AdvanceKind::Continue && p.offset != a.from {
            METRICS.positions_gaps.inc();
            log::error!(
                "position gap in {}: committed {} but the next acked range starts at {}; \
                 taking {} (please report this)",
                a.path.display(),
                p.offset,
                a.from,
                a.to
            );
        }
        p.offset = a.to;
        if *p.path != *a.path {
            p.path = a.path.to_path_buf();
            entry.unrenderable = false;
            self.order_stale = true;
        }
        p.fp_len = a.fingerprint.len;
        p.fp_hash = a.fingerprint.hash;
        entry.json.clear();
        if !entry.changed {
            entry.changed = true;
            self.changed.push(a.file);
        }
        self.committed.offsets().insert(a.file, a.to);
    }

    /// The committed offset of a file, if any.
    pub fn offset(&self, key: &FileKey) -> Option<u64> {
        self.files.get(key).map(|e| e.pos.offset)
    }

    /// Puts each `.gz` found to hold the rest of a gone file in that file's place (see
    /// `sources::files::recover`), before the writer starts.
    pub fn carry_over(&mut self, recoveries: &[Recovery]) {
        let mut offsets = self.committed.offsets();
        for r in recoveries {
            self.files.remove(&r.was);
            offsets.remove(&r.was);
            self.files.insert(r.pos.key(), Entry::new(r.pos.clone()));
            offsets.insert(r.pos.key(), r.pos.offset);
            self.dirty = true;
            self.order_stale = true;
            self.changes = None;
        }
    }

    /// Forgets files that are not on disk any more (found by the first scan).
    pub fn retain(&mut self, keep: impl Fn(&FileKey) -> bool) {
        let before = self.files.len();
        self.files.retain(|k, _| keep(k));
        self.committed.offsets().retain(|k, _| keep(k));
        if self.files.len() != before {
            self.dirty = true;
            self.order_stale = true;
            self.changes = None;
        }
    }

    /// Writes the file if something changed (see the module doc for when), and has it fsynced.
    pub fn maybe_save(&mut self) {
        let spacing = if self.failing {
            self.interval
        } else {
            (self.last_write_cpu * 10).min(self.interval)
        };
        if self.dirty && self.last_write.elapsed() >= spacing {
            self.write(false);
        }
    }

    /// Writes the file now, durably, if anything changed (at shutdown).
    pub fn save(&mut self) {
        if self.dirty {
            self.write(true);
        }
    }

    /// An append to the changes file, or a snapshot when one is due (at start, at shutdown,
    /// after a failed write, once the changes outgrow the snapshot). Errors are logged loudly
    /// and counted; what was written before stays intact.
    fn write(&mut self, durable: bool) {
        let cpu_before = thread_cpu();
        let snapshot = durable
            || self.changes.is_none()
            || self.changes_len > self.snapshot_len.max(MIN_CHANGES);
        self.render(snapshot);
        let file = if snapshot {
            store::FILE_NAME
        } else {
            store::CHANGES_NAME
        };
        let result = if snapshot {
            self.write_snapshot(durable)
        } else {
            self.append()
        };
        self.last_write = Instant::now();
        self.last_write_cpu = thread_cpu().saturating_sub(cpu_before);
        if result.is_err() {
            self.changes = None;
        }
        match result {
            Ok(()) => {
                for k in self.changed.drain(..) {
                    if let Some(e) = self.files.get_mut(&k) {
                        e.changed = false;
                    }
                }
                self.gone.clear();
                self.journal_changed = false;
                self.dirty = false;
                self.failing = false;
                METRICS.positions_writes.inc();
                if !durable {
                    self.request_sync();
                }
            }
            Err(e) => {
                self.failing = true;
                METRICS.positions_errors.inc();
                log::error!(
                    "cannot write positions to {}: {e}; tailing goes on, but a restart now would \
                     re-send lines since the last good write. Check that data_dir is writable and \
                     not full",
                    self.dir.join(file).display()
                );
            }
        }
    }

    /// Every entry, into a new positions file; then the changes file starts again, empty.
    fn write_snapshot(&mut self, durable: bool) -> std::io::Result<()> {
        let files = self.order.iter().filter_map(|k| {
            let json = &self.files.get(k)?.json;
            (!json.is_empty()).then_some(json.as_slice())
        });
        self.snapshot_len = store::save(&self.dir, files, self.journal_cursor.as_deref(), durable)?;
        let changes = store::start_changes(&self.dir)?;
        if durable {
            changes.sync_all()?;
        }
        self.changes = Some(changes);
        self.changes_len = 0;
        Ok(())
    }

    /// What changed since the last write, appended to the changes file in one `write`. An entry
    /// that cannot be rendered is written as gone, as a snapshot leaves it out.
    fn append(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        let files = &self.files;
        let unrenderable = self
            .changed
            .iter()
            .filter(|k| files.get(k).is_some_and(|e| e.json.is_empty()));
        let mut gone = self.gone.clone();
        gone.extend(unrenderable);
        let rendered = self.changed.iter().filter_map(|k| {
            let json = &files.get(k)?.json;
            (!json.is_empty()).then_some(json.as_slice())
        });
        let cursor = self
            .journal_cursor
            .as_deref()
            .filter(|_| self.journal_changed);
        store::render_changes(&mut self.buf, &gone, rendered, cursor)?;
        let Some(f) = self.changes.as_mut() else {
            return Err(std::io::Error::other("no changes file open"));
        };
        f.write_all(&self.buf)?;
        self.changes_len += self.buf.len() as u64;
        Ok(())
    }

    /// Brings the rendered entries up to date: for a snapshot, every entry and `order`; for an
    /// append, only the entries that changed (every other one is unchanged since the snapshot
    /// that rendered it). An entry whose path JSON cannot hold is left out of the file, and
    /// said once: that file is read again from its start after a restart (duplicates, not loss).
    fn render(&mut self, snapshot: bool) {
        if !snapshot {
            for k in &self.changed {
                if let Some(e) = self.files.get_mut(k) {
                    render_entry(e);
                }
            }
            return;
        }
        if self.order_stale {
            self.order.clear();
            self.order.extend(self.files.keys().copied());
            let files = &self.files;
            self.order.sort_unstable_by(|a, b| {
                store::order_key(&files[a].pos).cmp(&store::order_key(&files[b].pos))
            });
            self.order_stale = false;
        }
        self.files.values_mut().for_each(render_entry);
    }

    fn request_sync(&mut self) {
        if self.syncer.is_none() {
            match Syncer::start(self.dir.clone(), self.interval) {
                Ok(s) => self.syncer = Some(s),
                Err(e) => {
                    // No thread to spare: fsync here, as before the syncer existed.
                    log::warn!("cannot start the positions syncer thread: {e}; syncing inline");
                    if store::sync(&self.dir).is_err() {
                        METRICS.positions_errors.inc();
                    }
                    return;
                }
            }
        }
        if let Some(s) = &self.syncer {
            s.request();
        }
    }
}

/// Renders `e` unless it is rendered already or cannot be (said once).
fn render_entry(e: &mut Entry) {
    if !e.json.is_empty() || e.unrenderable {
        return;
    }
    if let Err(err) = store::render(&e.pos, &mut e.json) {
        e.json.clear();
        e.unrenderable = true;
        log::error!(
            "cannot keep the position of {}: {err}; after a restart it is read again from its \
             start",
            e.pos.path.display()
        );
    }
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which is plain data.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Fingerprint;
    use std::path::Path;
    use std::sync::Arc;

    fn adv(ino: u64, from: u64, to: u64, kind: AdvanceKind) -> Advance {
        Advance::File(FileAdvance {
            source: "pods",
            file: FileKey { dev: 1, ino },
            path: Arc::from(Path::new("/x/0.log")),
            fingerprint: Fingerprint { len: 3, hash: 9 },
            from,
            to,
            kind,
        })
    }

    #[test]
    fn applies_chained_advances_and_forgets_done_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Positions::new(dir.path().into(), &store::Loaded::default(), Duration::ZERO);
        p.apply(&adv(1, 0, 10, AdvanceKind::Continue));
        p.apply(&adv(1, 10, 25, AdvanceKind::Continue));
        p.apply(&adv(2, 0, 5, AdvanceKind::Continue));
        assert_eq!(p.offset(&FileKey { dev: 1, ino: 1 }), Some(25));
        p.apply(&adv(1, 0, 3, AdvanceKind::Restart));
        assert_eq!(p.offset(&FileKey { dev: 1, ino: 1 }), Some(3));
        p.apply(&adv(2, 5, 5, AdvanceKind::Done));
        assert_eq!(p.offset(&FileKey { dev: 1, ino: 2 }), None);
        p.save();
        p.apply(&Advance::Journal {
            cursor: "s=abc;i=1".into(),
        });
        p.save();
        let all = store::load(dir.path()).unwrap();
        assert_eq!(all.journal_cursor.as_deref(), Some("s=abc;i=1"));
        let loaded = all.files;
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            (loaded[0].ino, loaded[0].offset, loaded[0].fp_hash),
            (1, 3, 9)
        );
    }

    /// Entries are rendered once per change: what is written follows every change (offset,
    /// path, files that come and go), sorted by path, and a path that JSON cannot hold leaves
    /// that file out, not the whole write.
    #[test]
    fn each_write_holds_every_change_in_path_order() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let mut p = Positions::new(dir.path().into(), &store::Loaded::default(), Duration::ZERO);
        let at = |ino: u64, path: &[u8], from: u64, to: u64| {
            Advance::File(FileAdvance {
                source: "pods",
                file: FileKey { dev: 1, ino },
                path: Arc::from(Path::new(std::ffi::OsStr::from_bytes(path))),
                fingerprint: Fingerprint { len: 3, hash: ino },
                from,
                to,
                kind: AdvanceKind::Continue,
            })
        };
        let on_disk = |dir: &Path| -> Vec<(String, u64, u64)> {
            store::load(dir)
                .unwrap()
                .files
                .into_iter()
                .map(|f| (f.path.display().to_string(), f.ino, f.offset))
                .collect()
        };
        p.apply(&at(2, b"/x/b/0.log", 0, 10));
        p.apply(&at(1, b"/x/a/0.log", 0, 5));
        p.apply(&at(3, b"/x/\xff/0.log", 0, 7));
        p.save();
        assert_eq!(
            on_disk(dir.path()),
            [("/x/a/0.log".into(), 1, 5), ("/x/b/0.log".into(), 2, 10)]
        );
        // An offset, then a rename (kubelet's rotation) that moves the file after the other.
        p.apply(&at(1, b"/x/a/0.log", 5, 8));
        p.save();
        assert_eq!(on_disk(dir.path())[0], ("/x/a/0.log".into(), 1, 8));
        p.apply(&at(1, b"/x/c/0.log.20261207-100000", 8, 9));
        p.apply(&at(2, b"/x/b/0.log", 10, 11));
        p.save();
        assert_eq!(
            on_disk(dir.path()),
            [
                ("/x/b/0.log".into(), 2, 11),
                ("/x/c/0.log.20261207-100000".into(), 1, 9)
            ]
        );
        p.apply(&adv(2, 11, 11, AdvanceKind::Done));
        p.save();
        assert_eq!(
            on_disk(dir.path()),
            [("/x/c/0.log.20261207-100000".into(), 1, 9)]
        );
    }

    /// A `.gz` that holds a gone file takes its place: its own identity and path, the file's
    /// offset, from which its acks continue.
    #[test]
    fn a_compressed_copy_takes_the_gone_files_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Positions::new(dir.path().into(), &store::Loaded::default(), Duration::ZERO);
        p.apply(&adv(1, 0, 40, AdvanceKind::Continue));
        let gz = FilePos {
            path: "/x/0.log.20261207-100000.gz".into(),
            dev: 1,
            ino: 7,
            fp_len: 3,
            fp_hash: 9,
            offset: 40,
        };
        let r = Recovery {
            was: FileKey { dev: 1, ino: 1 },
            pos: gz.clone(),
            labels: crate::entry::LabelSet::new([("pod", "p".to_string())]),
            format: crate::sources::files::Format::Cri,
        };
        p.carry_over(&[r]);
        p.retain(|k| k.ino == 7);
        assert_eq!(p.offset(&FileKey { dev: 1, ino: 1 }), None);
        assert_eq!(p.committed().offsets().get(&gz.key()), Some(&40));
        p.save();
        assert_eq!(store::load(dir.path()).unwrap().files, [gz]);
        p.apply(&adv(7, 40, 90, AdvanceKind::Continue));
        assert_eq!(p.offset(&FileKey { dev: 1, ino: 7 }), Some(90));
    }

    #[test]
    fn every_ack_is_written_at_once_and_a_failure_waits_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let interval = Duration::from_secs(3600);
        let mut p = Positions::new(dir.path().into(), &store::Loaded::default(), interval);
        let on_disk = |dir: &Path| store::load(dir).unwrap().files[0].offset;
        p.apply(&adv(1, 0, 10, AdvanceKind::Continue));
        p.maybe_save();
        assert_eq!(on_disk(dir.path()), 10);
        // Well within the interval: written again, not held back (past the spacing, ten times
        // what a write takes: well under a millisecond here).
        std::thread::sleep(p.last_write_cpu * 10);
        p.apply(&adv(1, 10, 25, AdvanceKind::Continue));
        p.maybe_save();
        assert_eq!(on_disk(dir.path()), 25);
        assert!(p.syncer.is_some() && !p.dirty);

        // A failed write is retried only after the interval, not on every ack.
        let broken = dir.path().join("gone");
        let mut q = Positions::new(broken.clone(), &store::Loaded::default(), interval);
        let before = METRICS.positions_errors.get();
        for to in 1..5 {
            q.apply(&adv(2, to - 1, to, AdvanceKind::Continue));
            q.maybe_save();
        }
        // One failure here (another test may add one of its own at the same time), not four.
        let errors = METRICS.positions_errors.get() - before;
        assert!((1..=2).contains(&errors), "{errors} errors");
        assert!(q.failing && q.dirty);
        std::fs::create_dir(&broken).unwrap();
        q.save();
        assert_eq!(store::load(&broken).unwrap().files[0].offset, 4);
    }

    /// Between snapshots a write appends only what changed; loading the snapshot and the
    /// changes gives every change (offsets, a file let go, the journal cursor), and once the
    /// changes outgrow the snapshot they are folded into a new one.
    #[test]
    fn writes_append_what_changed_and_fold_it_into_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Positions::new(dir.path().into(), &store::Loaded::default(), Duration::ZERO);
        let snapshot = dir.path().join(store::FILE_NAME);
        let changes = dir.path().join(store::CHANGES_NAME);
        for ino in 1..=3 {
            p.apply(&adv(ino, 0, 10, AdvanceKind::Continue));
        }
        p.maybe_save();
        let first = std::fs::read(&snapshot).unwrap();
        assert_eq!(std::fs::metadata(&changes).unwrap().len(), 0);

        p.apply(&adv(2, 10, 20, AdvanceKind::Continue));
        p.apply(&adv(3, 10, 10, AdvanceKind::Done));
        p.apply(&Advance::Journal {
            cursor: "s=a;i=1".into(),
        });
        p.maybe_save();
        assert_eq!(
            std::fs::read(&snapshot).unwrap(),
            first,
            "appended, not rewritten"
        );
        let text = std::fs::read_to_string(&changes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], r#"{"gone":[1,3]}"#);
        assert!(lines[1].contains(r#""ino":2,"#) && lines[1].contains(r#""offset":20"#));
        assert_eq!(lines[2], r#"{"journal_cursor":"s=a;i=1"}"#);
        assert!(lines[3].starts_with(r#"{"saved_at":"#), "{text}");
        let loaded = store::load(dir.path()).unwrap();
        let offsets: Vec<(u64, u64)> = loaded.files.iter().map(|f| (f.ino, f.offset)).collect();
        assert_eq!(offsets, [(1, 10), (2, 20)]);
        assert_eq!(loaded.journal_cursor.as_deref(), Some("s=a;i=1"));
        assert!(loaded.changes_cut.is_none());

        // Each append is a few hundred bytes: past MIN_CHANGES, a snapshot holds it all.
        let mut to = 20;
        while std::fs::metadata(&changes).unwrap().len() > 0 || to == 20 {
            p.apply(&adv(2, to, to + 1, AdvanceKind::Continue));
            to += 1;
            p.maybe_save();
            assert!(to < 2000, "never folded into a snapshot");
        }
        assert!(to > 100, "folded after {to} writes");
        let back = store::load(dir.path()).unwrap();
        let offsets: Vec<(u64, u64)> = back.files.iter().map(|f| (f.ino, f.offset)).collect();
        assert_eq!(offsets, [(1, 10), (2, to)]);
        assert_eq!(back.journal_cursor.as_deref(), Some("s=a;i=1"));
    }

    #[test]
    fn a_gap_is_counted_and_the_newer_position_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Positions::new(dir.path().into(), &store::Loaded::default(), Duration::ZERO);
        let before = METRICS.positions_gaps.get();
        p.apply(&adv(1, 0, 10, AdvanceKind::Continue));
        p.apply(&adv(1, 20, 30, AdvanceKind::Continue));
        assert_eq!(METRICS.positions_gaps.get(), before + 1);
        assert_eq!(p.offset(&FileKey { dev: 1, ino: 1 }), Some(30));
    }

    #[test]
    fn an_unwritable_dir_is_an_error_not_a_crash() {
        let mut p = Positions::new(
            "/proc/definitely/not/here".into(),
            &store::Loaded::default(),
            Duration::ZERO,
        );
        let before = METRICS.positions_errors.get();
        p.apply(&adv(1, 0, 10, AdvanceKind::Continue));
        p.save();
        assert_eq!(METRICS.positions_errors.get(), before + 1);
    }
}
