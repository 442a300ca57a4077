//! Which log files exist: the [`Catalog`]s list them (pod logs,
//! `<root>/<namespace>_<pod>_<uid>/<container>/<n>.log` and the uncompressed rotated
//! `<n>.log.<timestamp>`; RKE2's `kubelet.log` and `containerd.log` with their lumberjack
//! backups), one batch of stats finds their identities, and the tailers are told what is new,
//! renamed or gone (sizes are shared values). It never reads a log line; it opens a file only
//! to fingerprint its first bytes.
//!
//! Files are keyed by identity (device, inode); the path is an attribute that rotation changes.
//! `.gz` and `.tmp` files (kubelet's compression of old rotations) are never listed, so a scan
//! never reads one; only a `.gz` that holds a file gone while ringtail was down is read, once,
//! by [`recover`] (found through [`Catalog::compressed_copies`]).
//!
//! Where a file starts is one decision table, [`decide_start`].

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::ReadFrom;
use crate::entry::{FileKey, Fingerprint, LabelSet};
use crate::metadata::{PodLabels, PodLookup, PodMetadata};
use crate::positions::store::FilePos;
use crate::positions::Committed;
use crate::shutdown::Stop;
use crate::sources::files::io::{BatchIo, Stat};
use crate::sources::files::recover::{self, Recovery, Search};
use crate::sources::files::tail::Tail;
use crate::sources::files::watch::{DirKind, Event, Refused, Watcher};
use crate::sources::files::Format;
use crate::telemetry::metrics::METRICS;

/// `<namespace>_<pod>_<uid>`: namespace and pod names cannot hold `_`, so the UID (or a static
/// pod's config hash) is what follows the last one.
pub fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let (namespace, rest) = name.split_once('_')?;
    let (pod, uid) = rest.rsplit_once('_')?;
    if namespace.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((namespace, pod, uid))
}

/// `Some(false)` for `<n>.log`, `Some(true)` for a rotated `<n>.log.<suffix>` that is not
/// compressed or temporary, `None` for anything else.
pub fn log_file_kind(name: &str) -> Option<bool> {
    let (stem, rest) = name.split_once(".log")?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match rest {
        "" => Some(false),
        r if r.starts_with('.') && !r.ends_with(".gz") && !r.ends_with(".tmp") && r.len() > 1 => {
            Some(true)
        }
        _ => None,
    }
}

/// The stream labels of a pod's container (contract §1).
pub fn pod_labels(
    namespace: &str,
    pod: &str,
    container: &str,
    node: &str,
    extra: &PodLabels,
) -> Arc<LabelSet> {
    LabelSet::new([
        ("namespace", namespace.to_string()),
        ("pod", pod.to_string()),
        ("container", container.to_string()),
        ("node", node.to_string()),
        ("app", extra.app.clone()),
        ("app_name", extra.app_name.clone()),
        ("job", format!("{namespace}/{container}")),
    ])
}

/// Whether a file's labels are complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaState {
    /// Complete, or there is no kube API and they never will be more.
    Final,
    /// The pod's API object has not arrived. `hold`: a new file still waits for it (up to
    /// `logs.pods.metadata.wait`); past that it is read without `app`/`app_name`, and relabelled
    /// when the object arrives.
    Pending { hold: bool },
}

/// A file found by a scan.
pub struct Found {
    pub path: PathBuf,
    pub labels: Arc<LabelSet>,
    pub meta: MetaState,
    pub rotated: bool,
    pub format: Format,
    /// Index of the catalog that listed it.
    pub catalog: usize,
}

/// The stream labels of an RKE2 daemon's log (contract §1): `node` keeps nodes apart.
pub fn rke2_labels(kind: &str, node: &str) -> Arc<LabelSet> {
    LabelSet::new([
        ("source", "rke2".to_string()),
        ("type", kind.to_string()),
        ("node", node.to_string()),
        ("job", format!("rke2/{kind}")),
    ])
}

/// A fixed log file and its rotated siblings.
pub struct FixedFile {
    pub path: PathBuf,
    pub labels: Arc<LabelSet>,
    /// Said once that the file's directory does not exist (yet).
    waiting: bool,
}

impl FixedFile {
    pub fn new(path: PathBuf, labels: Arc<LabelSet>) -> FixedFile {
        FixedFile {
            path,
            labels,
            waiting: false,
        }
    }
}

/// Where files come from.
pub enum Catalog {
    /// The kubelet's pod log tree.
    Pods(PodTree),
    /// Named files (RKE2's kubelet.log and containerd.log), rotated by rename to lumberjack
    /// backups `<stem>-<time><ext>` beside them, or truncated in place.
    Fixed(Vec<FixedFile>),
}

impl Catalog {
    /// The `source` label of its metrics.
    fn source(&self) -> &'static str {
        match self {
            Catalog::Pods(_) => Format::Cri.source(),
            Catalog::Fixed(_) => Format::Plain.source(),
        }
    }

    /// Where a compressed copy of `gone` (a path it listed, or a `.gz` of one) may be: the
    /// `.gz` files beside it named as its rotations are once compressed, with the labels and
    /// format of its lines. `None`: not one of its files.
    pub fn compressed_copies(&mut self, gone: &Path) -> Option<Compressed> {
        let dir = gone.parent()?;
        let name = gone.file_name()?.to_str()?;
        let name = name.strip_suffix(".gz").unwrap_or(name);
        match self {
            Catalog::Pods(tree) => {
                log_file_kind(name)?;
                let stem = name.split_once(".log")?.0;
                let labels = tree.labels_of(dir)?;
                let candidates = gz_beside(dir, |n| {
                    log_file_kind(n) == Some(true)
                        && n.split_once(".log").map(|s| s.0) == Some(stem)
                });
                Some(Compressed {
                    candidates,
                    labels,
                    format: Format::Cri,
                })
            }
            Catalog::Fixed(files) => {
                let f = files.iter().find(|f| f.path.parent() == Some(dir))?;
                let live = f.path.file_name()?.to_str()?;
                fixed_file_kind(live, name)?;
                Some(Compressed {
                    candidates: gz_beside(dir, |n| fixed_file_kind(live, n) == Some(true)),
                    labels: f.labels.clone(),
                    format: Format::Plain,
                })
            }
        }
    }

    /// Appends what it finds to `out` (with `scope`, only in those directories); false when it
    /// cannot say what exists (the pod root cannot be listed), so that nothing of it is taken
    /// for gone.
    fn list(&mut self, index: usize, scope: Option<&HashSet<PathBuf>>, out: &mut Listing) -> bool {
        match self {
            Catalog::Pods(tree) => tree.list(index, scope, out),
            Catalog::Fixed(files) => {
                let mut all_listed = true;
                for f in files.iter_mut() {
                    let in_scope =
                        scope.is_none_or(|s| f.path.parent().is_some_and(|d| s.contains(d)));
                    if in_scope {
                        all_listed &= list_fixed(f, index, out);
                    }
                }
                all_listed
            }
        }
    }
}

/// Where the lines of a file gone while ringtail was down may still be (see
/// [`Catalog::compressed_copies`]).
pub struct Compressed {
    pub candidates: Vec<PathBuf>,
    pub labels: Arc<LabelSet>,
    pub format: Format,
}

/// The `<name>.gz` files in `dir` whose `<name>` passes `rotation`, in name order.
fn gz_beside(dir: &Path, rotation: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".gz"))
                .is_some_and(&rotation)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// `containerd.log` and its backups `containerd-2024-11-25T10-00-00.000.log` (not `.gz`).
/// False when the directory exists but cannot be listed (then its files are not taken for gone).
fn list_fixed(f: &mut FixedFile, index: usize, out: &mut Listing) -> bool {
    let (Some(dir), Some(name)) = (f.path.parent(), f.path.file_name().and_then(|n| n.to_str()))
    else {
        return true;
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => {
            f.waiting = false;
            e
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            log::warn!(
                "cannot list {}: {e}; retrying on the next scan",
                dir.display()
            );
            return false;
        }
        Err(e) => {
            if !f.waiting {
                f.waiting = true;
                log::info!(
                    "waiting for {} to appear ({e}); this node may not run RKE2 (set \
                     logs.rke2.enabled: false if it never will)",
                    f.path.display()
                );
            }
            return true;
        }
    };
    out.dirs.push((dir.to_path_buf(), DirKind::Files));
    for e in entries.flatten() {
        let fname = e.file_name();
        let Some(rotated) = fname.to_str().and_then(|n| fixed_file_kind(name, n)) else {
            continue;
        };
        out.found.push(Found {
            path: e.path(),
            labels: f.labels.clone(),
            meta: MetaState::Final,
            rotated,
            format: Format::Plain,
            catalog: index,
        });
    }
    true
}

/// For the fixed file `live` (`containerd.log`): `Some(false)` for `name` itself, `Some(true)`
/// for a lumberjack backup of it (`containerd-<time>.log`), `None` for anything else.
fn fixed_file_kind(live: &str, name: &str) -> Option<bool> {
    let (stem, ext) = live.rsplit_once('.').map_or((live, ""), |(s, e)| (s, e));
    if name == live {
        return Some(false);
    }
    let backup = name
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(ext))
        .is_some_and(|r| r.ends_with('.') && r.len() > 1);
    backup.then_some(true)
}

/// The kubelet's pod log tree, and what is known of its pods' API objects.
pub struct PodTree {
    root: PathBuf,
    node: String,
    meta: Arc<dyn PodMetadata>,
    /// How long a new pod's files wait for its API object.
    wait: Duration,
    /// Pod directories whose API object has not arrived, since when.
    pending: HashMap<String, Instant>,
    /// The label set of each `<pod dir>/<container>` the last scan listed, and the pod labels it
    /// was made with: reused while they are unchanged, so a scan (every 500 ms) of 10,000 known
    /// files builds no label set, and a tracked file and the scan share one.
    labels: HashMap<String, (PodLabels, Arc<LabelSet>)>,
}

impl PodTree {
    pub fn new(root: PathBuf, node: String, meta: Arc<dyn PodMetadata>, wait: Duration) -> Self {
        PodTree {
            root,
            node,
            meta,
            wait,
            pending: HashMap::new(),
            labels: HashMap::new(),
        }
    }

    /// The labels of the files in container directory `dir` (`<root>/<pod dir>/<container>`):
    /// the set the last scan made for it, or one made from what the kube API knows now.
    fn labels_of(&self, dir: &Path) -> Option<Arc<LabelSet>> {
        let rel = dir.strip_prefix(&self.root).ok()?;
        let mut parts = rel.iter().map(|p| p.to_str());
        let (Some(Some(pod_dir)), Some(Some(container)), None) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let (namespace, pod, uid) = parse_pod_dir(pod_dir)?;
        if let Some((_, set)) = self.labels.get(&format!("{pod_dir}/{container}")) {
            return Some(set.clone());
        }
        let extra = match self.meta.lookup(uid) {
            PodLookup::Found(l) => l,
            PodLookup::Absent | PodLookup::Pending => PodLabels::default(),
        };
        Some(pod_labels(namespace, pod, container, &self.node, &extra))
    }

    /// Lists candidate files, and the directories that hold them (for watches); false when
    /// the root itself cannot be listed (then nothing can be concluded about what is gone).
    /// Unreadable pod or container directories are skipped and retried on the next scan.
    /// With `scope`, only those container directories are listed.
    fn list(
        &mut self,
        catalog: usize,
        scope: Option<&HashSet<PathBuf>>,
        out: &mut Listing,
    ) -> bool {
        if let Some(scope) = scope {
            let now = Instant::now();
            let mut labels_now = HashMap::new();
            for dir in scope {
                let Some(rel) = dir.strip_prefix(&self.root).ok() else {
                    continue;
                };
                let mut parts = rel.iter().map(|p| p.to_str());
                let (Some(Some(dir_name)), Some(Some(container)), None) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Some((namespace, pod, uid)) = parse_pod_dir(dir_name) else {
                    continue;
                };
                // Still pending: back into the map with its first sighting, so the wait is
                // measured from then, whatever scans happen meanwhile.
                let mut still = HashMap::new();
                let (extra, meta) = self.pod_meta(dir_name, uid, now, &mut still);
                self.pending.extend(still);
                let pod = PodRef {
                    dir_name,
                    namespace,
                    pod,
                    extra: &extra,
                    meta,
                };
                self.list_container(&pod, container, dir, catalog, &mut labels_now, out);
            }
            self.labels.extend(labels_now);
            return true;
        }
        let Ok(pods) = std::fs::read_dir(&self.root) else {
            return false;
        };
        out.dirs.push((self.root.clone(), DirKind::Tree));
        let now = Instant::now();
        let mut pending = HashMap::with_capacity(self.pending.len());
        let mut labels_now = HashMap::with_capacity(self.labels.len());
        for pod_dir in pods.flatten() {
            // kubelet makes real directories; a symlink would reach a pod's files a second
            // time under another name (and read them again from 0 as a "new" file).
            if pod_dir.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let name = pod_dir.file_name();
            let Some(dir_name) = name.to_str() else {
                continue;
            };
            let Some((namespace, pod, uid)) = parse_pod_dir(dir_name) else {
                continue;
            };
            let (extra, meta) = self.pod_meta(dir_name, uid, now, &mut pending);
            let Ok(containers) = std::fs::read_dir(pod_dir.path()) else {
                continue;
            };
            out.dirs.push((pod_dir.path(), DirKind::Tree));
            let pod = PodRef {
                dir_name,
                namespace,
                pod,
                extra: &extra,
                meta,
            };
            for c in containers.flatten() {
                if c.file_type().is_ok_and(|t| t.is_symlink()) {
                    continue;
                }
                let cname = c.file_name();
                let Some(container) = cname.to_str() else {
                    continue;
                };
                self.list_container(&pod, container, &c.path(), catalog, &mut labels_now, out);
            }
        }
        self.pending = pending;
        self.labels = labels_now;
        true
    }

    /// What the kube API says of a pod now; `pending` gets the pods still waited for, with
    /// since when.
    fn pod_meta(
        &mut self,
        dir_name: &str,
        uid: &str,
        now: Instant,
        pending: &mut HashMap<String, Instant>,
    ) -> (PodLabels, MetaState) {
        match self.meta.lookup(uid) {
            PodLookup::Found(l) => (l, MetaState::Final),
            PodLookup::Absent => (PodLabels::default(), MetaState::Final),
            PodLookup::Pending => {
                let since = self.pending.remove(dir_name).unwrap_or(now);
                pending.insert(dir_name.to_string(), since);
                let hold = now.duration_since(since) < self.wait;
                (PodLabels::default(), MetaState::Pending { hold })
            }
        }
    }

    /// The log files of one container directory.
    fn list_container(
        &mut self,
        pod: &PodRef,
        container: &str,
        dir: &Path,
        catalog: usize,
        labels_now: &mut HashMap<String, (PodLabels, Arc<LabelSet>)>,
        out: &mut Listing,
    ) {
        let Ok(files) = std::fs::read_dir(dir) else {
            return;
        };
        out.dirs.push((dir.to_path_buf(), DirKind::Files));
        let key = format!("{}/{container}", pod.dir_name);
        let mut labels = None;
        for f in files.flatten() {
            let fname = f.file_name();
            let Some(rotated) = fname.to_str().and_then(log_file_kind) else {
                continue;
            };
            let labels = labels
                .get_or_insert_with(|| {
                    let (k, was, set) = match self.labels.remove_entry(key.as_str()) {
                        Some((k, (was, set))) if was == *pod.extra => (k, was, set),
                        _ => (
                            key.clone(),
                            pod.extra.clone(),
                            pod_labels(pod.namespace, pod.pod, container, &self.node, pod.extra),
                        ),
                    };
                    labels_now.insert(k, (was, set.clone()));
                    set
                })
                .clone();
            out.found.push(Found {
                path: f.path(),
                labels,
                meta: pod.meta,
                rotated,
                format: Format::Cri,
                catalog,
            });
        }
    }
}

/// A pod directory being listed.
struct PodRef<'a> {
    dir_name: &'a str,
    namespace: &'a str,
    pod: &'a str,
    extra: &'a PodLabels,
    meta: MetaState,
}

/// What a listing found: files, and the directories that hold them.
#[derive(Default)]
pub struct Listing {
    found: Vec<Found>,
    dirs: Vec<(PathBuf, DirKind)>,
}

/// Where a file starts, or whether it is read at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    At(u64),
    /// A rotated file that predates ringtail: Alloy and Promtail skip it too.
    Skip,
}

/// Every tracked file is in the positions file within about a second of being found (see
/// `schedule.rs`, `to_register`). A rotated file without a position whose last write is this
/// close to the last positions write may have been created in that second: read it.
const ROTATED_MARGIN_SECS: i64 = 5;

/// The facts [`decide_start`] needs about a file seen for the first time by this process.
#[derive(Clone, Copy, Debug)]
pub struct FirstSight {
    /// Its stored position, if the fingerprint of its first bytes still matches.
    pub stored: Option<u64>,
    /// A position was stored for its identity but the content is another file's.
    pub reused_inode: bool,
    /// Found by the scan at start (not later, while running).
    pub at_start: bool,
    pub rotated: bool,
    pub size: u64,
    pub mtime: i64,
    /// When the positions file was last written, if there was one.
    pub saved_at: Option<u64>,
}

pub fn decide_start(f: FirstSight, read_from: ReadFrom) -> Start {
    match (f.stored, f.at_start, f.rotated, read_from) {
        // Resume where the last run's acks got to, unless the file is now shorter.
        (Some(off), _, _, _) if off <= f.size => Start::At(off),
        (Some(_), _, _, _) => Start::At(0),
        // Appeared while running: all of it is new.
        (None, false, _, _) => Start::At(0),
        // An inode we knew now holds other content: a new file.
        (None, true, _, _) if f.reused_inode => Start::At(0),
        (None, true, false, ReadFrom::Beginning) => Start::At(0),
        // `end` is for a first install; after that, a file without a position was created
        // while ringtail was down, and all of it is unread.
        (None, true, false, ReadFrom::End) => match f.saved_at {
            None => Start::At(f.size),
            Some(_) => Start::At(0),
        },
        // Rotated while ringtail was down: written after the last positions write (with a
        // margin for a file created just before it and not yet registered), so unread.
        (None, true, true, _) => match f.saved_at {
            Some(t) if f.mtime + ROTATED_MARGIN_SECS >= t as i64 => Start::At(0),
            _ => Start::Skip,
        },
    }
}

/// What discovery tells a tailer.
pub enum Control {
    Add(Box<Tail>),
    Moved {
        key: FileKey,
        path: Arc<Path>,
    },
    Gone {
        key: FileKey,
    },
    /// inotify said it was written (or a scan found its size changed): read it now.
    Wake {
        key: FileKey,
    },
    /// The pod's API object arrived after the file was first read: chunks from now on carry
    /// these labels.
    Relabel {
        key: FileKey,
        labels: Arc<LabelSet>,
    },
}

struct Known {
    path: Arc<Path>,
    /// The catalog that lists it: only a catalog that listed successfully can say it is gone.
    catalog: usize,
    /// Shared with the tailer: the size at the last scan.
    size: Arc<AtomicU64>,
    /// Of the first bytes at first sight: a rename must keep them, or the inode was reused.
    fingerprint: Fingerprint,
    /// Consecutive scans that did not find it. A rename that lands between `readdir` and
    /// `stat` makes a file invisible for one scan; only [`GONE_AFTER`] misses mean it is gone.
    missed: u8,
    /// `None`: seen and deliberately not read (skipped).
    tailer: Option<usize>,
    /// Read without its pod's metadata so far (see [`MetaState::Pending`]).
    labels_pending: bool,
    labels: Arc<LabelSet>,
    /// Where reading started: the read lag's base until a position is committed.
    start: u64,
    /// Its directory had an inotify watch when it was added: its tailer waits for wakes
    /// instead of polling it.
    watched: bool,
}

/// Scans a file must be missing from before it is declared gone.
const GONE_AFTER: u8 = 2;
/// Without inotify, how often the tree is listed: new files are picked up within this.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// With inotify: how long events gather before discovery acts on them, so that a burst (a
/// busy file, twenty trickling ones) costs one look and one wake per file, and the files
/// written within one window are read, batched and pushed together (see `sink::IDLE_LINGER`).
const GATHER: Duration = Duration::from_millis(50);
/// While a window's events only say that known files were written, it goes on gathering up to
/// this long: a trickle's lines then wake every stage ~6 times a second instead of ~10, and
/// their p99 write-to-ack stays well under 250 ms. An event that a file or directory came or
/// went ends the window at once, so a new file's first line still waits only [`GATHER`].
const WRITE_GATHER: Duration = Duration::from_millis(150);
/// How soon a directory where a file went missing is looked at again.
const FOLLOW_UP: Duration = Duration::from_millis(200);
/// Longest wait for an event: how soon a stop is noticed.
const STOP_CHECK: Duration = Duration::from_millis(250);
/// Scans of the log tree that count as "at start": two, so that a file hidden from the first
/// by a rename between `readdir` and `stat` is not taken for a new one (or its position for a
/// gone file's).
const START_SCANS: u8 = 2;

/// Gathers one window of events once the first has come: [`GATHER`], then, while they only
/// say files were written, more of them up to [`WRITE_GATHER`] (each wait again [`GATHER`], so
/// a busy file costs one read a window, not one per write).
fn gather(w: &mut Watcher, events: &mut Vec<Event>) {
    let end = Instant::now() + WRITE_GATHER;
    std::thread::sleep(GATHER);
    events.clear();
    w.read(events);
    while events.iter().all(|e| matches!(e, Event::Written(_))) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || !w.wait(left) {
            return;
        }
        std::thread::sleep(GATHER.min(end.saturating_duration_since(Instant::now())));
        w.read(events);
    }
}

/// The discovery loop's state.
pub struct Discovery {
    catalogs: Vec<Catalog>,
    /// Which catalogs listed successfully in this scan.
    listed: Vec<bool>,
    read_from: ReadFrom,
    stored: HashMap<FileKey, FilePos>,
    saved_at: Option<u64>,
    known: HashMap<FileKey, Known>,
    tailers: Vec<Sender<Control>>,
    io: BatchIo,
    /// Successful start scans still to do (see [`START_SCANS`]).
    start_scans: u8,
    /// Files that could not be opened, warned about once; retried on every scan.
    unreadable: HashSet<FileKey>,
    cpaths: Vec<CString>,
    stats: Vec<std::io::Result<Stat>>,
    /// Committed offsets, for `ringtail_read_lag_bytes`.
    committed: Option<Arc<Committed>>,
    /// `.gz` files found at start to hold the rest of a gone file, for [`recover`].
    recoveries: Vec<Recovery>,
    /// Their identities: each continues one position only.
    claimed: HashSet<FileKey>,
    /// inotify, when it is on and available (see [`watch`](super::watch)).
    watcher: Option<Watcher>,
    /// With a watcher: how often the whole tree is listed anyway.
    rescan: Duration,
    /// Said once that watches ran out.
    refused_said: bool,
    /// Tracked files by path, for the files a write event names.
    paths: HashMap<Arc<Path>, FileKey>,
    /// Files to wake once the scan is done: their size changed, and no event said so.
    wake: HashSet<FileKey>,
    listing: Listing,
    /// When the read lag was last set, and whether it was above 0.
    reported: Instant,
    lagging: bool,
    /// Directories of files the last scan did not find (fewer than [`GONE_AFTER`] times), to
    /// look at again shortly; set by each scan, so that the event loop need not go through
    /// every file to find them.
    missing_in: HashSet<PathBuf>,
    /// Directories with a file that waits for its pod's API object (held back, or read without
    /// `app`/`app_name` so far): looked at again every [`POLL_EVERY`] until it is known, as
    /// nothing else may happen there before the next rescan.
    pending_in: HashSet<PathBuf>,
}

impl Discovery {
    pub fn new(
        catalogs: Vec<Catalog>,
        read_from: ReadFrom,
        stored: Vec<FilePos>,
        saved_at: Option<u64>,
        tailers: Vec<Sender<Control>>,
        io: BatchIo,
    ) -> Discovery {
        Discovery {
            listed: vec![false; catalogs.len()],
            catalogs,
            read_from,
            stored: stored.into_iter().map(|p| (p.key(), p)).collect(),
            saved_at,
            known: HashMap::new(),
            tailers,
            io,
            start_scans: START_SCANS,
            unreadable: HashSet::new(),
            cpaths: Vec::new(),
            stats: Vec::new(),
            committed: None,
            recoveries: Vec::new(),
            claimed: HashSet::new(),
            watcher: None,
            rescan: Duration::ZERO,
            refused_said: false,
            paths: HashMap::new(),
            wake: HashSet::new(),
            listing: Listing::default(),
            reported: Instant::now(),
            lagging: false,
            missing_in: HashSet::new(),
            pending_in: HashSet::new(),
        }
    }

    /// Looks when inotify says something changed, and lists the whole tree every `rescan`
    /// anyway, instead of every [`POLL_EVERY`].
    pub fn with_watcher(mut self, watcher: Watcher, rescan: Duration) -> Discovery {
        self.watcher = Some(watcher);
        self.rescan = rescan;
        self
    }

    /// Reads committed offsets from here to report the read lag.
    pub fn with_committed(mut self, committed: Arc<Committed>) -> Discovery {
        self.committed = Some(committed);
        self
    }

    /// Identities seen so far, and the `.gz` files that continue gone ones: once the start
    /// scans are done, positions of anything else belong to files that are gone.
    pub fn known_keys(&self) -> impl Fn(&FileKey) -> bool + '_ {
        |k| self.known.contains_key(k) || self.claimed.contains(k)
    }

    /// The `.gz` files found at start to hold the rest of a gone file (see [`recover`]).
    pub fn take_recoveries(&mut self) -> Vec<Recovery> {
        std::mem::take(&mut self.recoveries)
    }

    /// True once the start scans have listed the tree.
    pub fn started(&self) -> bool {
        self.start_scans == 0
    }

    /// Runs until `stop`: with a watcher, looks when events say something changed and lists
    /// the whole tree every `rescan`; without one, lists it every [`POLL_EVERY`].
    pub fn run(mut self, stop: &Stop) {
        if self.watcher.is_none() {
            while !stop.stopping() {
                std::thread::sleep(POLL_EVERY);
                if !stop.stopping() {
                    self.scan();
                }
            }
            return;
        }
        let mut events = Vec::new();
        let mut next_rescan = Instant::now() + self.rescan;
        // Directories where a scan found a file missing once: looked at again shortly, to
        // tell a rename that raced the scan from a file that went (see GONE_AFTER).
        let mut follow_up: Option<(Instant, HashSet<PathBuf>)> = None;
        while !stop.stopping() {
            let now = Instant::now();
            let mut until = follow_up
                .as_ref()
                .map_or(next_rescan, |(at, _)| (*at).min(next_rescan));
            if self.lagging {
                until = until.min(self.reported + POLL_EVERY);
            }
            let wait = until.saturating_duration_since(now).min(STOP_CHECK);
            if let Some(w) = self.watcher.as_mut().filter(|w| w.wait(wait)) {
                gather(w, &mut events);
                self.on_events(&events);
            }
            let now = Instant::now();
            if now >= next_rescan {
                self.scan();
                next_rescan = now + self.rescan;
            } else if self.lagging && now >= self.reported + POLL_EVERY {
                self.report_lag();
            } else if let Some((_, dirs)) = follow_up.take_if(|(at, _)| now >= *at) {
                self.scan_in(Some(&dirs));
            }
            if follow_up.is_none() && !self.missing_in.is_empty() {
                follow_up = Some((now + FOLLOW_UP, std::mem::take(&mut self.missing_in)));
            } else if follow_up.is_none() && !self.pending_in.is_empty() {
                follow_up = Some((now + POLL_EVERY, std::mem::take(&mut self.pending_in)));
            }
        }
    }

    /// Acts on what inotify reported: wakes the files written, and scans where files or
    /// directories came or went (everything, after an overflow).
    fn on_events(&mut self, events: &[Event]) {
        let (mut tree, mut overflow) = (false, false);
        let mut dirs: HashSet<PathBuf> = HashSet::new();
        for e in events {
            match e {
                Event::Written(path) => {
                    if let Some(&key) = self.paths.get(path.as_path()) {
                        self.wake.insert(key);
                    }
                }
                Event::FilesChanged(dir) => {
                    dirs.insert(dir.clone());
                }
                Event::DirCreated(dir) => self.created_dir(dir, &mut dirs),
                Event::TreeChanged => tree = true,
                Event::Overflow => overflow = true,
            }
        }
        if overflow {
            METRICS.inotify_overflows.inc();
            log::warn!(
                "inotify's event queue overflowed: scanning every log file; raise \
                 fs.inotify.max_queued_events if this repeats"
            );
            self.wake.extend(self.known.keys().copied());
            self.scan();
        } else if tree {
            self.scan();
        } else if !dirs.is_empty() {
            self.scan_in(Some(&dirs));
        } else {
            self.note_written_sizes();
            self.send_wakes();
        }
    }

    /// A directory made in the pod tree: a container's is listed like one whose files changed;
    /// a pod's is watched, then its container directories are (a container made after this
    /// look is its own event). A full scan for each new pod would cost as much as the safety
    /// rescan, on every pod start.
    fn created_dir(&mut self, dir: &Path, dirs: &mut HashSet<PathBuf>) {
        let depth = self.catalogs.iter().find_map(|c| match c {
            Catalog::Pods(t) => dir.strip_prefix(&t.root).ok().map(|rel| rel.iter().count()),
            Catalog::Fixed(_) => None,
        });
        match depth {
            Some(1) => {
                if let Some(w) = self.watcher.as_mut() {
                    // Refused: the next full scan counts it among the polled.
                    let _ = w.watch(dir, DirKind::Tree);
                }
                if let Ok(containers) = std::fs::read_dir(dir) {
                    for c in containers.flatten() {
                        if c.file_type().is_ok_and(|t| t.is_dir()) {
                            dirs.insert(c.path());
                        }
                    }
                }
            }
            Some(2) => {
                dirs.insert(dir.to_path_buf());
            }
            _ => {}
        }
    }

    /// The sizes of the files written, in one batch of stats: the read lag
    /// (`ringtail_read_lag_bytes`) stays right while the tailers are held back, between scans.
    fn note_written_sizes(&mut self) {
        let keys: Vec<FileKey> = self.wake.iter().copied().collect();
        self.cpaths.clear();
        let mut stated = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(k) = self.known.get(&key) {
                if let Ok(c) = CString::new(k.path.as_os_str().as_bytes()) {
                    self.cpaths.push(c);
                    stated.push(key);
                }
            }
        }
        self.io.stat_batch(&self.cpaths, &mut self.stats);
        for (key, st) in stated.iter().zip(&self.stats) {
            if let (Some(k), Ok(st)) = (self.known.get(key), st) {
                if st.dev == key.dev && st.ino == key.ino {
                    k.size.store(st.size, Ordering::Relaxed);
                }
            }
        }
        if self.reported.elapsed() >= POLL_EVERY {
            self.report_lag();
        }
    }

    /// Wakes the tailers of the files in `wake`.
    fn send_wakes(&mut self) {
        for key in self.wake.drain() {
            if let Some(t) = self.known.get(&key).and_then(|k| k.tailer) {
                let _ = self.tailers[t].send(Control::Wake { key });
            }
        }
    }

    /// Watches the directories the last listing found; logs once when watches run out.
    fn watch_listed(&mut self) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        let mut refused = (0, None);
        for (dir, kind) in &self.listing.dirs {
            if let Err(r) = w.watch(dir, *kind) {
                refused.0 += 1;
                refused.1 = refused.1.or(Some(r));
            }
        }
        match refused {
            (n, Some(r)) if n > 0 && !self.refused_said && r != Refused::Other => {
                self.refused_said = true;
                let why = match r {
                    Refused::Cap => "tail.max_watches is reached: raise it".to_string(),
                    _ => "the kernel's fs.inotify.max_user_watches is used up (other programs \
                          of the node share it): raise it with sysctl"
                        .to_string(),
                };
                log::warn!(
                    "no inotify watch for {n} log directories, at {} watches: {why}. Their files \
                     are polled meanwhile (ringtail_files_polled)",
                    w.watches()
                );
            }
            _ => {}
        }
        METRICS.inotify_watches.set(w.watches() as i64);
    }

    /// One pass over the whole tree.
    pub fn scan(&mut self) {
        self.scan_in(None);
    }

    /// One pass over the tree, or with `scope` over those container directories only.
    fn scan_in(&mut self, scope: Option<&HashSet<PathBuf>>) {
        let at_start = self.start_scans > 0;
        let mut held: HashSet<PathBuf> = HashSet::new();
        self.listing.found.clear();
        self.listing.dirs.clear();
        for (i, c) in self.catalogs.iter_mut().enumerate() {
            self.listed[i] = c.list(i, scope, &mut self.listing);
        }
        self.watch_listed();
        if !self.listed.iter().any(|&l| l) {
            return;
        }
        let events = self.watcher.is_some();
        self.cpaths.clear();
        self.cpaths.extend(
            self.listing
                .found
                .iter()
                .filter_map(|f| CString::new(f.path.as_os_str().as_bytes()).ok()),
        );
        self.io.stat_batch(&self.cpaths, &mut self.stats);
        let mut seen: HashMap<FileKey, usize> = HashMap::with_capacity(self.listing.found.len());
        for (i, st) in self.stats.iter().enumerate() {
            let Ok(st) = st else { continue };
            if !st.regular {
                continue;
            }
            let key = FileKey {
                dev: st.dev,
                ino: st.ino,
            };
            // The live `<n>.log` name wins over a rotated one for the same inode (hard links).
            match seen.get(&key) {
                Some(&j) if !self.listing.found[j].rotated => {}
                _ => {
                    seen.insert(key, i);
                }
            }
        }
        for (&key, &i) in &seen {
            let Ok(st) = &self.stats[i] else { continue };
            let (size, mtime) = (st.size, st.mtime);
            let found = &self.listing.found[i];
            let renamed_in_place = match self.known.get(&key) {
                Some(k) if *k.path == *found.path => {
                    // A size that changed with no event said so (one was lost): read it.
                    if k.size.swap(size, Ordering::Relaxed) != size && events && k.watched {
                        self.wake.insert(key);
                    }
                    None
                }
                Some(k) => Some(same_file(&k.path, &found.path, key, k.fingerprint)),
                None => None,
            };
            // Not for a reused inode (`Some(false)`): that is another file, added below.
            if let Some(k) = self
                .known
                .get_mut(&key)
                .filter(|_| renamed_in_place != Some(false))
            {
                if k.labels_pending && found.meta == MetaState::Final {
                    k.labels_pending = false;
                    k.labels = found.labels.clone();
                    if let Some(t) = k.tailer {
                        METRICS.file_event("relabelled");
                        let _ = self.tailers[t].send(Control::Relabel {
                            key,
                            labels: found.labels.clone(),
                        });
                    }
                }
            }
            match (self.known.get_mut(&key), renamed_in_place) {
                (Some(k), None) => k.missed = 0,
                (Some(k), Some(true)) => {
                    k.missed = 0;
                    if k.size.swap(size, Ordering::Relaxed) != size && events && k.watched {
                        self.wake.insert(key);
                    }
                    // The old name may be the new file's already (kubelet's `0.log`).
                    if self.paths.get(&k.path) == Some(&key) {
                        self.paths.remove(&k.path);
                    }
                    k.path = Arc::from(found.path.as_path());
                    self.paths.insert(k.path.clone(), key);
                    if let Some(t) = k.tailer {
                        METRICS.file_event("renamed");
                        let _ = self.tailers[t].send(Control::Moved {
                            key,
                            path: k.path.clone(),
                        });
                    }
                }
                // Same identity, other content or another directory: the inode was freed and
                // reused. The tailer lets the old file go when the new one is added.
                (Some(_), Some(false)) | (None, _) => {
                    if found.meta == (MetaState::Pending { hold: true }) && !at_start {
                        // Found again on a scan of `pending_in`, once its pod is known or the
                        // wait is over.
                        if let Some(d) = found.path.parent() {
                            held.insert(d.to_path_buf());
                        }
                        continue;
                    }
                    let path: Arc<Path> = Arc::from(found.path.as_path());
                    let labels_pending = matches!(found.meta, MetaState::Pending { .. });
                    if labels_pending {
                        METRICS.file_event("without_metadata");
                        log::debug!(
                            "{}: its pod is not known to the kube API yet; reading it without \
                             app/app_name until it is",
                            found.path.display()
                        );
                    }
                    let spec = Spec {
                        labels: found.labels.clone(),
                        labels_pending,
                        rotated: found.rotated,
                        format: found.format,
                        catalog: found.catalog,
                    };
                    let old = match self.add(key, path, spec, size, mtime, at_start) {
                        Some(known) => {
                            // Counted once it could be opened: an unreadable file is retried
                            // on every scan, not new each time.
                            METRICS.file_event("new");
                            self.paths.insert(known.path.clone(), key);
                            self.known.insert(key, known)
                        }
                        None => self.known.remove(&key),
                    };
                    if let Some(old) = old.filter(|o| self.paths.get(&o.path) == Some(&key)) {
                        if self.known.get(&key).is_none_or(|k| k.path != old.path) {
                            self.paths.remove(&old.path);
                        }
                    }
                }
            }
        }
        let mut gone: Vec<FileKey> = Vec::new();
        for (key, k) in self.known.iter_mut() {
            let in_scope = scope.is_none_or(|s| k.path.parent().is_some_and(|d| s.contains(d)));
            if in_scope && self.listed[k.catalog] && !seen.contains_key(key) {
                k.missed += 1;
                if k.missed >= GONE_AFTER {
                    gone.push(*key);
                }
            }
        }
        for key in gone {
            if let Some(k) = self.known.remove(&key) {
                if self.paths.get(&k.path) == Some(&key) {
                    self.paths.remove(&k.path);
                }
                if let Some(t) = k.tailer {
                    let _ = self.tailers[t].send(Control::Gone { key });
                }
            }
        }
        self.missing_in.clear();
        for k in self.known.values() {
            let Some(dir) = k.path.parent() else { continue };
            if k.missed > 0 {
                self.missing_in.insert(dir.to_path_buf());
            }
            if k.labels_pending {
                held.insert(dir.to_path_buf());
            }
        }
        // Out of scope, what was pending stays so; in it, this scan said.
        if let Some(scope) = scope {
            self.pending_in.retain(|d| !scope.contains(d));
        } else {
            self.pending_in.clear();
        }
        self.pending_in.extend(held);
        self.send_wakes();
        self.report();
        if at_start {
            self.start_scans -= 1;
            if self.start_scans == 0 {
                self.report_missing_at_start();
            }
        }
    }

    /// Per source, at the end of a scan: files being tailed and distinct streams among them;
    /// then the read lag.
    fn report(&mut self) {
        let mut per: HashMap<&'static str, (i64, HashSet<&str>)> = self
            .catalogs
            .iter()
            .map(|c| (c.source(), (0, HashSet::new())))
            .collect();
        for k in self.known.values().filter(|k| k.tailer.is_some()) {
            if let Some(e) = self
                .catalogs
                .get(k.catalog)
                .and_then(|c| per.get_mut(c.source()))
            {
                e.0 += 1;
                e.1.insert(k.labels.rendered());
            }
        }
        for (source, (files, streams)) in per {
            METRICS.source_counts(source, files, streams.len() as i64);
        }
        let polled = self
            .known
            .values()
            .filter(|k| k.tailer.is_some() && !k.watched)
            .count();
        METRICS.files_polled.set(polled as i64);
        self.report_lag();
    }

    /// Per source, the read lag (`ringtail_read_lag_bytes`): bytes on disk not yet acked by
    /// Loki. Besides scans, set after write events and, while it is above 0, every
    /// [`POLL_EVERY`], so that it falls to 0 as acks arrive even when the next scan is far
    /// away; a caught-up, quiet node does not wake for it.
    fn report_lag(&mut self) {
        self.reported = Instant::now();
        let mut per: Vec<(&'static str, u64)> = Vec::new();
        for c in &self.catalogs {
            if !per.iter().any(|(s, _)| *s == c.source()) {
                per.push((c.source(), 0));
            }
        }
        let committed = self.committed.as_ref().map(|c| c.offsets());
        for (key, k) in &self.known {
            if k.tailer.is_none() {
                continue;
            }
            let done = committed
                .as_ref()
                .and_then(|c| c.get(key).copied())
                .unwrap_or(k.start);
            let source = self.catalogs.get(k.catalog).map(Catalog::source);
            if let Some(e) = per.iter_mut().find(|(s, _)| Some(*s) == source) {
                e.1 += k.size.load(Ordering::Relaxed).saturating_sub(done);
            }
        }
        drop(committed);
        self.lagging = per.iter().any(|(_, lag)| *lag > 0);
        for (source, lag) in per {
            METRICS.read_lag(source, lag);
        }
    }

    /// Positions whose file is no longer in the tree when ringtail starts: rotated and
    /// compressed (or deleted) while it was down.
    fn report_missing_at_start(&mut self) {
        let mut stored: Vec<FilePos> = self.stored.drain().map(|(_, p)| p).collect();
        // The same order on every start, so a `.gz` two positions could claim goes to the same
        // one each time.
        stored.sort_by(|a, b| a.path.cmp(&b.path));
        for p in stored {
            self.gone_at_start(p);
        }
    }

    /// A position whose file is gone: what was written after it may be in a `.gz` that kubelet
    /// made of the file (then it is recovered); otherwise it is lost, and said so.
    fn gone_at_start(&mut self, p: FilePos) {
        let copies = self
            .catalogs
            .iter_mut()
            .find_map(|c| c.compressed_copies(&p.path));
        let Some(copies) = copies else {
            warn_gone(
                &p,
                Search::NotFound {
                    unreadable: Vec::new(),
                },
            );
            return;
        };
        match recover::find(&p, &copies.candidates, &self.claimed) {
            Search::Found { path, key } => {
                METRICS.file_event("compressed_found");
                log::info!(
                    "{} (read up to byte {}) was compressed into {} while ringtail was down; \
                     reading the rest from it",
                    p.path.display(),
                    p.offset,
                    path.display()
                );
                self.claimed.insert(key);
                self.recoveries.push(Recovery {
                    was: p.key(),
                    pos: FilePos {
                        path,
                        dev: key.dev,
                        ino: key.ino,
                        ..p
                    },
                    labels: copies.labels,
                    format: copies.format,
                });
            }
            other => warn_gone(&p, other),
        }
    }

    /// Decides where a file seen for the first time starts and hands it to a tailer. `None`:
    /// it could not be opened; it is tried again on the next scan.
    fn add(
        &mut self,
        key: FileKey,
        path: Arc<Path>,
        spec: Spec,
        size: u64,
        mtime: i64,
        at_start: bool,
    ) -> Option<Known> {
        let Spec {
            labels,
            labels_pending,
            rotated,
            format,
            catalog,
        } = spec;
        let head = match read_head(&path, key) {
            Ok(Some(h)) => {
                self.unreadable.remove(&key);
                h
            }
            Ok(None) => {
                // Renamed since the scan's stat (kubelet rotating it): its bytes are not at
                // this path any more. The next scan finds it under its new name.
                METRICS.file_event("renamed_while_scanned");
                return None;
            }
            Err(e) => {
                if self.unreadable.insert(key) {
                    METRICS.file_event("unreadable");
                    log::warn!(
                        "cannot read {}: {e}; retrying on every scan. Give ringtail read access \
                         (the DaemonSet runs with DAC_READ_SEARCH and the log groups), and check \
                         the open-file limit",
                        path.display()
                    );
                }
                return None;
            }
        };
        let had_position = self.stored.contains_key(&key);
        let (stored, reused_inode) = match self.stored.remove(&key) {
            Some(p) => {
                let fp = p.fingerprint();
                let matches = head.len() >= fp.len as usize
                    && Fingerprint::of(&head[..fp.len as usize]) == fp;
                if matches {
                    (Some(p.offset), false)
                } else {
                    // The inode was freed and reused: the file the position was for is gone.
                    self.gone_at_start(p);
                    (None, true)
                }
            }
            None => (None, false),
        };
        let sight = FirstSight {
            stored,
            reused_inode,
            at_start,
            rotated,
            size,
            mtime,
            saved_at: self.saved_at,
        };
        let size_hint = Arc::new(AtomicU64::new(size));
        let fingerprint = Fingerprint::of(&head);
        let start = match decide_start(sight, self.read_from) {
            Start::Skip => {
                METRICS.file_event("skipped");
                log::debug!(
                    "not reading {}: rotated before ringtail first ran",
                    path.display()
                );
                return Some(Known {
                    path,
                    catalog,
                    size: size_hint,
                    fingerprint,
                    missed: 0,
                    tailer: None,
                    labels_pending,
                    labels,
                    start: size,
                    watched: false,
                });
            }
            Start::At(off) if off == size && !rotated && stored.is_none() && off > 0 => {
                align_to_line_start(&path, off)
            }
            Start::At(off) => off,
        };
        log::debug!("tailing {} from offset {start}", path.display());
        let t = (hash_key(&key) % self.tailers.len() as u64) as usize;
        let mut tail = Tail::new(
            key,
            path.clone(),
            labels.clone(),
            format,
            fingerprint,
            start,
            size_hint.clone(),
        );
        if had_position && stored != Some(start) {
            tail.restart_chain();
        }
        let watched = self
            .watcher
            .as_ref()
            .zip(path.parent())
            .is_some_and(|(w, dir)| w.watched(dir));
        tail.watched = watched;
        let _ = self.tailers[t].send(Control::Add(Box::new(tail)));
        Some(Known {
            path,
            catalog,
            size: size_hint,
            fingerprint,
            missed: 0,
            tailer: Some(t),
            labels_pending,
            labels,
            start,
            watched,
        })
    }
}

/// What a catalog says about a file found for the first time.
struct Spec {
    labels: Arc<LabelSet>,
    labels_pending: bool,
    rotated: bool,
    format: Format,
    catalog: usize,
}

/// Whether a known file found under a new path is still the file it was: kubelet renames
/// within the container's directory, and the first bytes stay what they were.
fn same_file(old: &Path, new: &Path, key: FileKey, fp: Fingerprint) -> bool {
    if old.parent() != new.parent() {
        return false;
    }
    match read_head(new, key) {
        Ok(Some(head)) => {
            head.len() >= fp.len as usize && Fingerprint::of(&head[..fp.len as usize]) == fp
        }
        // Cannot tell (renamed again since the scan, or unreadable); a rename is by far the
        // likelier.
        Ok(None) | Err(_) => true,
    }
}

/// A gone file whose lines after its position are in no file ringtail can find.
fn warn_gone(p: &FilePos, search: Search) {
    METRICS.file_event("gone_while_down");
    let why = match search {
        Search::NoFingerprint => {
            "; nothing of it had been read, so no compressed copy could be told to be its".into()
        }
        Search::NotFound { unreadable } => unreadable
            .iter()
            .map(|(path, e)| format!("; {} could not be decompressed: {e}", path.display()))
            .collect::<String>(),
        Search::Found { .. } => String::new(),
    };
    log::warn!(
        "{} (read up to byte {}) is gone: it was deleted, or rotated and compressed, while \
         ringtail was not running, and no compressed copy of it is beside it{why}; lines \
         written to it after that point were not shipped",
        p.path.display(),
        p.offset
    );
}

fn hash_key(k: &FileKey) -> u64 {
    k.ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.dev
}

/// The first bytes of a file, for its fingerprint.
/// The first bytes of the file at `path`, if it is still the file `key` (the scan's stat of
/// that path): `None` when another file is there now. kubelet renames `0.log` and creates a new
/// one at any moment, and a head read by path after that would be the new file's, which made a
/// restart take the old file for a reused inode and read all of it again (the kill -9 storm's
/// old re-sends).
fn read_head(path: &Path, key: FileKey) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path)?;
    let m = file.metadata()?;
    if m.dev() != key.dev || m.ino() != key.ino {
        return Ok(None);
    }
    let mut head = Vec::with_capacity(Fingerprint::MAX_LEN);
    file.take(Fingerprint::MAX_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(Some(head))
}

/// With `read_from: end`, start after the last complete line, not in the middle of one.
fn align_to_line_start(path: &Path, size: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return size;
    };
    let from = size.saturating_sub(64 << 10);
    let mut buf = vec![0u8; (size - from) as usize];
    match f.read_exact_at(&mut buf, from) {
        Ok(()) => memchr::memrchr(b'\n', &buf).map_or(from, |i| from + i as u64 + 1),
        Err(_) => size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::PodLabels;

    #[test]
    fn pod_dirs_and_static_pods() {
        assert_eq!(
            parse_pod_dir("emojivoto_web-7d9c_0f3a2b1c-1111-2222-3333-444455556666"),
            Some((
                "emojivoto",
                "web-7d9c",
                "0f3a2b1c-1111-2222-3333-444455556666"
            ))
        );
        // A static pod: the config hash stands where the UID would.
        assert_eq!(
            parse_pod_dir("kube-system_kube-apiserver-node1_5e7f3e2c9d0a4b1c8f6e2d3a4b5c6d7e"),
            Some((
                "kube-system",
                "kube-apiserver-node1",
                "5e7f3e2c9d0a4b1c8f6e2d3a4b5c6d7e"
            ))
        );
        assert_eq!(parse_pod_dir("nounderscore"), None);
        assert_eq!(parse_pod_dir("ns_pod"), None);
        assert_eq!(parse_pod_dir("_pod_uid"), None);
    }

    #[test]
    fn log_file_names() {
        assert_eq!(log_file_kind("0.log"), Some(false));
        assert_eq!(log_file_kind("12.log"), Some(false));
        assert_eq!(log_file_kind("0.log.20241125-100000"), Some(true));
        assert_eq!(log_file_kind("0.log.20241125-100000.gz"), None);
        assert_eq!(log_file_kind("0.log.20241125-100000.tmp"), None);
        assert_eq!(log_file_kind("x.log"), None);
        assert_eq!(log_file_kind("0.log."), None);
        assert_eq!(log_file_kind("0.txt"), None);
    }

    #[test]
    fn labels_follow_the_contract() {
        let apps = PodLabels {
            app: "web".into(),
            app_name: "emoji".into(),
        };
        let l = pod_labels("emojivoto", "web-1", "web", "node-a", &apps);
        assert_eq!(
            l.rendered(),
            r#"{app="web", app_name="emoji", container="web", job="emojivoto/web", namespace="emojivoto", node="node-a", pod="web-1"}"#
        );
        let l = pod_labels("ns", "p", "c", "n", &PodLabels::default());
        assert_eq!(
            l.rendered(),
            r#"{container="c", job="ns/c", namespace="ns", node="n", pod="p"}"#
        );
    }

    /// A pod's labels as the test says they are now.
    struct Labels(std::sync::Mutex<PodLabels>);

    impl PodMetadata for Labels {
        fn lookup(&self, _: &str) -> PodLookup {
            PodLookup::Found(self.0.lock().expect("lock").clone())
        }
    }

    #[test]
    fn scans_reuse_a_containers_label_set_until_its_pod_labels_change() {
        let root = tempfile::tempdir().expect("temp dir");
        for c in ["web", "proxy"] {
            let dir = root.path().join("ns_web-1_uid-1").join(c);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("0.log"), "").expect("write");
            std::fs::write(dir.join("0.log.20241125-100000"), "").expect("write");
        }
        let meta = Arc::new(Labels(std::sync::Mutex::new(PodLabels {
            app: "web".into(),
            app_name: String::new(),
        })));
        let mut tree = PodTree::new(
            root.path().to_path_buf(),
            "node-a".into(),
            meta.clone(),
            Duration::ZERO,
        );
        let list = |tree: &mut PodTree| {
            let mut out = Listing::default();
            assert!(tree.list(0, None, &mut out));
            // The root, the pod and its two containers are the directories to watch.
            assert_eq!(out.dirs.len(), 4);
            let mut found = out.found;
            found.sort_by(|a, b| a.path.cmp(&b.path));
            found
        };
        let first = list(&mut tree);
        assert_eq!(first.len(), 4);
        // A container's files share one set; another container has its own.
        assert!(Arc::ptr_eq(&first[0].labels, &first[1].labels));
        assert!(!Arc::ptr_eq(&first[0].labels, &first[2].labels));
        let second = list(&mut tree);
        for (a, b) in first.iter().zip(&second) {
            assert!(Arc::ptr_eq(&a.labels, &b.labels), "{:?} rebuilt", b.path);
        }
        // A scan of one container directory lists its files only, with the same label set.
        let one = root.path().join("ns_web-1_uid-1").join("web");
        let mut scoped = Listing::default();
        assert!(tree.list(0, Some(&HashSet::from([one.clone()])), &mut scoped));
        assert_eq!(scoped.found.len(), 2);
        assert!(scoped
            .found
            .iter()
            .all(|f| f.path.parent() == Some(one.as_path())));
        let web = second
            .iter()
            .find(|f| f.path.parent() == Some(one.as_path()))
            .unwrap();
        assert!(Arc::ptr_eq(&scoped.found[0].labels, &web.labels));
        assert_eq!(scoped.dirs, [(one, DirKind::Files)]);
        meta.0.lock().expect("lock").app = "web-v2".into();
        let third = list(&mut tree);
        for (a, b) in second.iter().zip(&third) {
            assert!(
                !Arc::ptr_eq(&a.labels, &b.labels),
                "{:?} kept stale labels",
                b.path
            );
            assert!(b.labels.rendered().contains(r#"app="web-v2""#));
        }
    }

    fn sight(stored: Option<u64>, at_start: bool, rotated: bool) -> FirstSight {
        FirstSight {
            stored,
            reused_inode: false,
            at_start,
            rotated,
            size: 100,
            mtime: 50,
            saved_at: Some(40),
        }
    }

    #[test]
    fn start_table() {
        use ReadFrom::*;
        assert_eq!(
            decide_start(sight(Some(30), true, false), End),
            Start::At(30)
        );
        assert_eq!(
            decide_start(sight(Some(30), true, true), End),
            Start::At(30)
        );
        assert_eq!(
            decide_start(sight(Some(300), true, false), Beginning),
            Start::At(0)
        );
        assert_eq!(decide_start(sight(None, false, false), End), Start::At(0));
        assert_eq!(decide_start(sight(None, false, true), End), Start::At(0));
        assert_eq!(
            decide_start(sight(None, true, false), Beginning),
            Start::At(0)
        );
        // `end` only on a first install (no positions file yet).
        assert_eq!(decide_start(sight(None, true, false), End), Start::At(0));
        let mut first_install = sight(None, true, false);
        first_install.saved_at = None;
        assert_eq!(decide_start(first_install, End), Start::At(100));
        assert_eq!(
            decide_start(sight(None, true, true), Beginning),
            Start::At(0)
        );
        let mut old = sight(None, true, true);
        old.mtime = 36;
        assert_eq!(
            decide_start(old, Beginning),
            Start::At(0),
            "within the margin"
        );
        old.mtime = 10;
        assert_eq!(decide_start(old, Beginning), Start::Skip);
        old.saved_at = None;
        assert_eq!(decide_start(old, Beginning), Start::Skip);
        let mut reused = sight(None, true, false);
        reused.reused_inode = true;
        assert_eq!(decide_start(reused, End), Start::At(0));
    }

    #[test]
    fn lumberjack_backups_of_a_fixed_file() {
        let live = "containerd.log";
        assert_eq!(fixed_file_kind(live, "containerd.log"), Some(false));
        assert_eq!(
            fixed_file_kind(live, "containerd-2024-11-25T10-00-00.000.log"),
            Some(true)
        );
        assert_eq!(fixed_file_kind(live, "containerd-.log"), None);
        assert_eq!(fixed_file_kind(live, "containerd.log.gz"), None);
        assert_eq!(fixed_file_kind(live, "kubelet.log"), None);
        assert_eq!(
            fixed_file_kind("messages", "messages-20241125."),
            Some(true)
        );
    }

    /// The `.gz` files that may hold a gone file's lines: its own rotations' only, named as
    /// kubelet (or lumberjack) names them.
    #[test]
    fn compressed_copies_are_the_files_own_rotations() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ns_web-1_uid-1").join("c");
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "0.log",
            "0.log.20261207-100000.gz",
            "0.log.20261207-110000.gz",
            "0.log.20261207-120000.tmp",
            "0.log.20261207-120000",
            "1.log.20261207-100000.gz",
            "notes.gz",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let mut pods = Catalog::Pods(PodTree::new(
            root.path().to_path_buf(),
            "node-a".into(),
            Arc::new(crate::metadata::NoMetadata),
            Duration::ZERO,
        ));
        let want = [
            dir.join("0.log.20261207-100000.gz"),
            dir.join("0.log.20261207-110000.gz"),
        ];
        for gone in ["0.log", "0.log.20261207-090000", "0.log.20261207-100000.gz"] {
            let c = pods.compressed_copies(&dir.join(gone)).expect(gone);
            assert_eq!(c.candidates, want, "{gone}");
            assert_eq!(c.format, Format::Cri);
            assert_eq!(
                c.labels.rendered(),
                r#"{container="c", job="ns/c", namespace="ns", node="node-a", pod="web-1"}"#
            );
        }
        assert!(pods.compressed_copies(&dir.join("x.log")).is_none());
        assert!(pods
            .compressed_copies(Path::new("/elsewhere/ns_p_u/c/0.log"))
            .is_none());

        let logs = tempfile::tempdir().unwrap();
        for f in [
            "containerd.log",
            "containerd-2026-12-07T10-00-00.000.log.gz",
            "kubelet.log.gz",
        ] {
            std::fs::write(logs.path().join(f), "").unwrap();
        }
        let labels = rke2_labels("containerd", "node-a");
        let mut fixed = Catalog::Fixed(vec![FixedFile::new(
            logs.path().join("containerd.log"),
            labels.clone(),
        )]);
        let c = fixed
            .compressed_copies(&logs.path().join("containerd-2026-12-07T09-00-00.000.log"))
            .unwrap();
        assert_eq!(
            c.candidates,
            [logs
                .path()
                .join("containerd-2026-12-07T10-00-00.000.log.gz")]
        );
        assert!(Arc::ptr_eq(&c.labels, &labels));
        assert_eq!(c.format, Format::Plain);
        assert!(fixed
            .compressed_copies(&logs.path().join("kubelet.log"))
            .is_none());
    }

    /// kubelet's rotation between a scan's stat of `0.log` and the read of its first bytes: the
    /// path now names the new file, whose bytes are not the stat's file's.
    #[test]
    fn a_head_is_read_only_from_the_file_the_scan_saw() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20261207-100000");
        std::fs::write(&live, b"old file's first line\n").unwrap();
        let m = std::fs::metadata(&live).unwrap();
        let old = FileKey {
            dev: m.dev(),
            ino: m.ino(),
        };
        assert_eq!(
            read_head(&live, old).unwrap().as_deref(),
            Some(&b"old file's first line\n"[..])
        );
        std::fs::rename(&live, &rotated).unwrap();
        std::fs::write(&live, b"new file\n").unwrap();
        assert_eq!(read_head(&live, old).unwrap(), None);
        // Found under its new name, it is still the file it was.
        let fp = Fingerprint::of(b"old file's first line\n");
        assert!(same_file(&live, &rotated, old, fp));
        // The new file at the old name is another file, whatever the key says.
        let m = std::fs::metadata(&live).unwrap();
        let new = FileKey {
            dev: m.dev(),
            ino: m.ino(),
        };
        assert!(!same_file(&rotated, &live, new, fp));
    }
}
