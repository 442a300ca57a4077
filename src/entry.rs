//! What flows from the sources to the sink: chunks of entries, their labels, and the position
//! each chunk advances. Plain data, no I/O.
//!
//! Why chunks and not entries: a tailer reads a block of a file and turns all of its lines into
//! one [`Chunk`]. Lines and structured-metadata values are appended to one byte buffer and
//! referenced by [`Span`]s, so the hot path allocates per chunk (and chunks are reused through the
//! ring's pool), never per line. The chunk is the unit that crosses the ring, is batched, and is
//! acked; its [`Advance`] is committed only once the sink has an answer for it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A stream's label set, rendered once in the Prometheus text form Loki parses.
///
/// Invariant: `pairs` are sorted by name, hold no empty value, and `rendered` is their text form.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LabelSet {
    pairs: Vec<(&'static str, String)>,
    rendered: String,
}

impl LabelSet {
    /// Builds a label set; empty values are left out, because Loki drops them anyway.
    pub fn new(pairs: impl IntoIterator<Item = (&'static str, String)>) -> Arc<LabelSet> {
        let mut pairs: Vec<_> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let mut rendered = String::from("{");
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                rendered.push_str(", ");
            }
            rendered.push_str(name);
            rendered.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => rendered.push_str("\\\\"),
                    '"' => rendered.push_str("\\\""),
                    '\n' => rendered.push_str("\\n"),
                    c => rendered.push(c),
                }
            }
            rendered.push('"');
        }
        rendered.push('}');
        // Kept for as long as the file is tracked (10,000 files on a dense node): no spare room.
        pairs.shrink_to_fit();
        rendered.shrink_to_fit();
        Arc::new(LabelSet { pairs, rendered })
    }

    pub fn pairs(&self) -> &[(&'static str, String)] {
        &self.pairs
    }

    /// `{a="b", c="d"}`, as sent in `StreamAdapter.labels`.
    pub fn rendered(&self) -> &str {
        &self.rendered
    }
}

/// Structured-metadata names. A closed set: every name ringtail sends is listed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Stream,
    Level,
    TraceId,
    Truncated,
    Pid,
    SyslogIdentifier,
    /// An Event's involved object.
    Name,
    Reason,
    Node,
}

impl MetaKey {
    pub fn as_str(self) -> &'static str {
        match self {
            MetaKey::Stream => "stream",
            MetaKey::Level => "level",
            MetaKey::TraceId => "trace_id",
            MetaKey::Truncated => "truncated",
            MetaKey::Pid => "pid",
            MetaKey::SyslogIdentifier => "syslog_identifier",
            MetaKey::Name => "name",
            MetaKey::Reason => "reason",
            MetaKey::Node => "node",
        }
    }
}

/// A structured-metadata value: text in the chunk, or a constant (`stdout`, `true`, a common
/// level) that costs no bytes per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaVal {
    Span(Span),
    Static(&'static str),
}

/// A byte range in [`Chunk::data`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

/// One log entry, by reference into its chunk.
#[derive(Clone, Copy, Debug)]
pub struct EntryRec {
    /// Index of its label set in [`Chunk::labels`].
    pub labels: u16,
    /// Unix time in nanoseconds.
    pub ts_ns: i64,
    /// The line; valid UTF-8, at most `max_line_size` bytes.
    pub line: Span,
    /// Range in [`Chunk::meta`].
    pub meta_start: u32,
    pub meta_end: u32,
}

/// Which file a chunk came from: device and inode. The path is only an attribute (rotation
/// renames files), so positions are keyed by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// Tells a reused inode from the file a position was recorded for: a hash of the first `len`
/// bytes (at most [`Fingerprint::MAX_LEN`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

impl Fingerprint {
    pub const MAX_LEN: usize = 1024;

    /// FNV-1a over `head[..min(len, MAX_LEN)]`: stable across runs and builds, which std's
    /// hasher is not.
    pub fn of(head: &[u8]) -> Fingerprint {
        let head = &head[..head.len().min(Self::MAX_LEN)];
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in head {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Fingerprint {
            len: head.len() as u32,
            hash,
        }
    }

    /// A fingerprint of fewer than `MAX_LEN` bytes can still grow as the file does.
    pub fn is_complete(&self) -> bool {
        self.len as usize == Self::MAX_LEN
    }
}

/// The position a chunk moves its source to, committed once the chunk is acked.
#[derive(Clone, Debug)]
pub enum Advance {
    File(FileAdvance),
    /// The journal's cursor of the chunk's last entry.
    Journal {
        cursor: String,
    },
    /// The chunk's last Kubernetes Event (events are shipped in resourceVersion order).
    Events(EventsPos),
}

/// Where Events shipping stands: the last shipped Event's resourceVersion and timestamp. Kept
/// on the Lease (see [`crate::k8s::lease`]), so that the next holder resumes from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventsPos {
    pub resource_version: String,
    /// Unix nanoseconds.
    pub ts_ns: i64,
}

impl Advance {
    pub fn as_file(&self) -> Option<&FileAdvance> {
        match self {
            Advance::File(a) => Some(a),
            Advance::Journal { .. } | Advance::Events(_) => None,
        }
    }

    /// The source the position belongs to.
    pub fn source(&self) -> &'static str {
        match self {
            Advance::File(a) => a.source,
            Advance::Journal { .. } => "journal",
            Advance::Events(_) => "events",
        }
    }
}

/// The position a chunk moves its file to: the interval `(from, to]` of byte offsets.
///
/// `to` is a safe restart point: it never points into a pending CRI partial line, so a restart
/// from `to` loses nothing (it may repeat lines of the other stream that followed the partial).
#[derive(Clone, Debug)]
pub struct FileAdvance {
    /// `pods` or `rke2`: the `source` of `ringtail_positions_commits_total`.
    pub source: &'static str,
    pub file: FileKey,
    pub path: Arc<Path>,
    pub fingerprint: Fingerprint,
    pub from: u64,
    pub to: u64,
    pub kind: AdvanceKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvanceKind {
    /// `from` continues the previous advance of this file.
    Continue,
    /// The file was truncated (or its content replaced): `from` is 0 and the chain restarts.
    Restart,
    /// The file is gone and read to its end: forget its position once this is acked.
    Done,
}

/// A block of entries from one source read, with the position it advances.
#[derive(Debug)]
pub struct Chunk {
    /// Label sets used by `entries` (see [`EntryRec::labels`]); a file's chunk has one, a
    /// journal chunk one per unit and level. Never empty.
    pub labels: Vec<Arc<LabelSet>>,
    pub entries: Vec<EntryRec>,
    pub meta: Vec<(MetaKey, MetaVal)>,
    pub data: Vec<u8>,
    pub advance: Option<Advance>,
    /// When the bytes were read: `loki_process_duration_seconds` is measured from here.
    pub read_at: Instant,
}

impl Chunk {
    pub fn new(labels: Arc<LabelSet>) -> Chunk {
        Chunk {
            labels: vec![labels],
            entries: Vec::new(),
            meta: Vec::new(),
            data: Vec::new(),
            advance: None,
            read_at: Instant::now(),
        }
    }

    /// Empties the chunk for reuse, keeping its allocations.
    pub fn reset(&mut self, labels: Arc<LabelSet>) {
        self.labels.clear();
        self.labels.push(labels);
        self.entries.clear();
        self.meta.clear();
        self.data.clear();
        self.advance = None;
        self.read_at = Instant::now();
    }

    /// The index of `labels` in this chunk, adding it when it is new. Label sets are compared by
    /// pointer: sources intern them.
    pub fn label_index(&mut self, labels: &Arc<LabelSet>) -> u16 {
        match self.labels.iter().position(|l| Arc::ptr_eq(l, labels)) {
            Some(i) => i as u16,
            None => {
                self.labels.push(labels.clone());
                (self.labels.len() - 1) as u16
            }
        }
    }

    /// The label set of an entry.
    pub fn labels_of(&self, e: &EntryRec) -> &LabelSet {
        &self.labels[usize::from(e.labels).min(self.labels.len() - 1)]
    }

    pub fn str(&self, span: Span) -> &str {
        let bytes = &self.data[span.start as usize..span.end as usize];
        // Every span is written by `push_str`-like helpers from valid UTF-8 (see
        // `process::limits`), so this cannot fail; fall back rather than panic.
        std::str::from_utf8(bytes).unwrap_or("\u{FFFD}")
    }

    /// The bytes of a span, without the UTF-8 check of [`Chunk::str`] (the encoder's path:
    /// protobuf strings are bytes on the wire, and every span is valid UTF-8 by construction).
    pub fn bytes(&self, span: Span) -> &[u8] {
        &self.data[span.start as usize..span.end as usize]
    }

    /// A metadata value's bytes.
    pub fn meta_bytes<'a>(&'a self, v: &'a MetaVal) -> &'a [u8] {
        match v {
            MetaVal::Span(s) => self.bytes(*s),
            MetaVal::Static(s) => s.as_bytes(),
        }
    }

    pub fn meta_of(&self, e: &EntryRec) -> &[(MetaKey, MetaVal)] {
        &self.meta[e.meta_start as usize..e.meta_end as usize]
    }

    pub fn meta_str<'a>(&'a self, v: &'a MetaVal) -> &'a str {
        match v {
            MetaVal::Span(s) => self.str(*s),
            MetaVal::Static(s) => s,
        }
    }

    /// Appends a string, returning its span.
    pub fn push_valid(&mut self, s: &str) -> Span {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(s.as_bytes());
        Span {
            start,
            end: self.data.len() as u32,
        }
    }

    /// Bytes this chunk adds to a batch: lines plus metadata values (Alloy's `batch_size`
    /// measure; protobuf overhead is not counted, nor are constant values).
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// Memory the chunk holds: its buffers' capacities (a pooled chunk keeps the capacity of
    /// its largest read), for bounds on what the writer keeps.
    pub fn footprint(&self) -> usize {
        self.data.capacity()
            + self.entries.capacity() * std::mem::size_of::<EntryRec>()
            + self.meta.capacity() * std::mem::size_of::<(MetaKey, MetaVal)>()
    }
}
