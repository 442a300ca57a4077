//! Turns one log line into one entry of a chunk: structured metadata (`stream`, `level`,
//! `trace_id`, `truncated`) and the line itself, within Loki's limits (contract §1).
//!
//! Pure and synchronous: bytes in, an [`EntryRec`] appended to the chunk out, plus counts. No I/O,
//! and no allocation per line: JSON is parsed in the per-chunk arena, and everything else is
//! appended to the chunk's buffer.

pub mod json;
pub mod level;
pub mod limits;
pub mod plain;
pub mod trace;

use bumpalo::Bump;

use crate::config::JsonLine;
use crate::entry::{Chunk, EntryRec, MetaKey, MetaVal};
use json::{JsonScanner, LevelValue};
use trace::{TraceId, TraceScanner};

/// A container's output stream, from the CRI record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Outcomes counted per line, added to the metrics once per chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineCounts {
    pub lines: u64,
    pub truncated: u64,
    pub repaired: u64,
    pub malformed: u64,
}

/// Per-thread processing state: the arena, the parsers, the limits.
pub struct Processor {
    arena: Bump,
    json: JsonScanner,
    trace: TraceScanner,
    json_line: JsonLine,
    max_line: usize,
    pub counts: LineCounts,
}

impl Processor {
    pub fn new(json_line: JsonLine, max_line_size: usize) -> Processor {
        Processor {
            arena: Bump::with_capacity(64 << 10),
            json: JsonScanner::default(),
            trace: TraceScanner::default(),
            json_line,
            max_line: max_line_size,
            counts: LineCounts::default(),
        }
    }

    /// The longest line sent; longer ones are cut and marked `truncated`.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Frees what the lines of the last chunk used in the arena; call after each chunk.
    pub fn end_chunk(&mut self) {
        self.arena.reset();
    }

    /// Appends a pod log line. `truncated` says the line was already cut upstream (a partial
    /// line over the limit).
    pub fn pod_line(
        &mut self,
        chunk: &mut Chunk,
        ts_ns: i64,
        stream: Stream,
        content: &[u8],
        truncated: bool,
    ) {
        let meta_start = chunk.meta.len() as u32;
        chunk
            .meta
            .push((MetaKey::Stream, MetaVal::Static(stream.as_str())));
        let mut line = content;
        let mut trace: Option<TraceId> = None;
        let quick = match self.json_line {
            JsonLine::Raw => self.json.quick_level(content),
            JsonLine::Msg => None,
        };
        if let Some(raw) = quick {
            if let Some(level) = push_level(chunk, raw) {
                chunk.meta.push((MetaKey::Level, level));
            }
        } else if content.first() == Some(&b'{') {
            if let Some(fields) = self.json.scan(&self.arena, content) {
                let level = match fields.level {
                    Some(LevelValue::Text(t)) => push_level(chunk, t.as_bytes()),
                    Some(LevelValue::Number(n)) => level::from_number(n).map(MetaVal::Static),
                    None => None,
                };
                if let Some(level) = level {
                    chunk.meta.push((MetaKey::Level, level));
                }
                trace = fields.trace_id.and_then(|t| TraceId::parse(t.as_bytes()));
                if let (JsonLine::Msg, Some(msg)) = (self.json_line, fields.msg) {
                    line = msg.as_bytes();
                }
            }
        }
        if trace.is_none() {
            trace = self.trace.find(content);
        }
        if let Some(id) = trace {
            let span = chunk.push_valid(id.as_str());
            chunk.meta.push((MetaKey::TraceId, MetaVal::Span(span)));
        }
        push_entry(
            &mut self.counts,
            self.max_line,
            chunk,
            ts_ns,
            line,
            truncated,
            meta_start,
        );
    }

    /// Appends a plain line (RKE2's kubelet.log and containerd.log): SM `level` and the
    /// timestamp from its klog header or logrus fields, else `fallback_ns`. Returns the line's
    /// own timestamp, if it has one.
    pub fn plain_line(
        &mut self,
        chunk: &mut Chunk,
        read_ns: i64,
        fallback_ns: i64,
        line: &[u8],
        truncated: bool,
    ) -> Option<i64> {
        let h = plain::header(line, read_ns);
        let meta_start = chunk.meta.len() as u32;
        if let Some(level) = h.level.and_then(|l| push_level(chunk, l)) {
            chunk.meta.push((MetaKey::Level, level));
        }
        push_entry(
            &mut self.counts,
            self.max_line,
            chunk,
            h.ts_ns.unwrap_or(fallback_ns),
            line,
            truncated,
            meta_start,
        );
        h.ts_ns
    }

    /// Appends an entry with its own label set and structured-metadata fields (a journal entry's
    /// `pid` and `syslog_identifier`, an Event's `name`, `reason` and `node`). Fields that are
    /// absent or empty are left out; values are repaired like lines, and cut at 1 KiB.
    pub fn fielded_line(
        &mut self,
        chunk: &mut Chunk,
        labels: u16,
        ts_ns: i64,
        message: &[u8],
        fields: &[(MetaKey, Option<&[u8]>)],
    ) {
        let meta_start = chunk.meta.len() as u32;
        for &(key, value) in fields {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                let w = limits::push_line(&mut chunk.data, v, 1024);
                chunk.meta.push((key, MetaVal::Span(w.span)));
            }
        }
        push_entry_labeled(
            &mut self.counts,
            self.max_line,
            chunk,
            labels,
            ts_ns,
            message,
            false,
            meta_start,
        );
    }

    /// Appends a line that is not a CRI record (malformed), raw, with the time it was read.
    /// `truncated`: only its start is here.
    pub fn malformed_line(&mut self, chunk: &mut Chunk, read_ns: i64, raw: &[u8], truncated: bool) {
        self.counts.malformed += 1;
        let meta_start = chunk.meta.len() as u32;
        push_entry(
            &mut self.counts,
            self.max_line,
            chunk,
            read_ns,
            raw,
            truncated,
            meta_start,
        );
    }
}

/// Appends one entry of label set 0 (a file's chunk has only that one).
fn push_entry(
    counts: &mut LineCounts,
    max_line: usize,
    chunk: &mut Chunk,
    ts_ns: i64,
    line: &[u8],
    truncated: bool,
    meta_start: u32,
) {
    push_entry_labeled(
        counts, max_line, chunk, 0, ts_ns, line, truncated, meta_start,
    );
}

#[allow(clippy::too_many_arguments)]
fn push_entry_labeled(
    counts: &mut LineCounts,
    max_line: usize,
    chunk: &mut Chunk,
    labels: u16,
    ts_ns: i64,
    line: &[u8],
    truncated: bool,
    meta_start: u32,
) {
    let w = limits::push_line(&mut chunk.data, line, max_line);
    counts.lines += 1;
    counts.repaired += u64::from(w.repaired);
    if truncated || w.truncated {
        counts.truncated += 1;
        chunk
            .meta
            .push((MetaKey::Truncated, MetaVal::Static("true")));
    }
    chunk.entries.push(EntryRec {
        labels,
        ts_ns,
        line: w.span,
        meta_start,
        meta_end: chunk.meta.len() as u32,
    });
}

/// Normalises a level into a constant when it is a common one, else into the chunk.
fn push_level(chunk: &mut Chunk, raw: &[u8]) -> Option<MetaVal> {
    let mut buf = level::LevelBuf::default();
    let norm = level::normalize(raw, &mut buf)?;
    const COMMON: [&str; 7] = [
        "trace", "debug", "info", "notice", "warn", "error", "critical",
    ];
    Some(match COMMON.iter().find(|c| **c == norm) {
        Some(c) => MetaVal::Static(c),
        None => MetaVal::Span(chunk.push_valid(norm)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::LabelSet;

    fn entry(chunk: &Chunk, i: usize) -> (i64, String, Vec<(&'static str, String)>) {
        let e = &chunk.entries[i];
        let meta = chunk
            .meta_of(e)
            .iter()
            .map(|(k, v)| (k.as_str(), chunk.meta_str(v).to_string()))
            .collect();
        (e.ts_ns, chunk.str(e.line).to_string(), meta)
    }

    fn chunk() -> Chunk {
        Chunk::new(LabelSet::new([("namespace", "ns".to_string())]))
    }

    #[test]
    fn json_line_gets_level_and_trace() {
        let mut p = Processor::new(JsonLine::Raw, 1024);
        let mut c = chunk();
        let line =
            br#"{"level":"WARNING","msg":"disk","trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736"}"#;
        p.pod_line(&mut c, 7, Stream::Stderr, line, false);
        let (ts, text, meta) = entry(&c, 0);
        assert_eq!(ts, 7);
        assert_eq!(text.as_bytes(), line);
        assert_eq!(
            meta,
            vec![
                ("stream", "stderr".into()),
                ("level", "warn".into()),
                ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736".into())
            ]
        );
    }

    #[test]
    fn msg_mode_sends_only_the_message() {
        let mut p = Processor::new(JsonLine::Msg, 1024);
        let mut c = chunk();
        p.pod_line(
            &mut c,
            1,
            Stream::Stdout,
            br#"{"level":"info","msg":"a \"b\""}"#,
            false,
        );
        p.pod_line(&mut c, 2, Stream::Stdout, br#"{"level":"info"}"#, false);
        assert_eq!(entry(&c, 0).1, "a \"b\"");
        assert_eq!(entry(&c, 1).1, r#"{"level":"info"}"#);
    }

    #[test]
    fn plain_lines_istio_and_limits() {
        let mut p = Processor::new(JsonLine::Raw, 40);
        let mut c = chunk();
        p.pod_line(
            &mut c,
            1,
            Stream::Stdout,
            b"X-B3-Traceid:[e457b5a2e4d86bd1]",
            false,
        );
        p.pod_line(&mut c, 2, Stream::Stdout, &[b'x'; 50], false);
        p.pod_line(&mut c, 3, Stream::Stdout, b"bad \xff utf8", true);
        p.malformed_line(&mut c, 4, b"garbage", false);
        assert_eq!(
            entry(&c, 0).2,
            vec![
                ("stream", "stdout".into()),
                ("trace_id", "e457b5a2e4d86bd1".into())
            ]
        );
        assert_eq!(entry(&c, 1).1.len(), 40);
        assert_eq!(entry(&c, 1).2[1], ("truncated", "true".into()));
        assert_eq!(entry(&c, 2).1, "bad \u{FFFD} utf8");
        assert_eq!(entry(&c, 2).2[1], ("truncated", "true".into()));
        assert_eq!(entry(&c, 3), (4, "garbage".into(), vec![]));
        assert_eq!(
            p.counts,
            LineCounts {
                lines: 4,
                truncated: 2,
                repaired: 1,
                malformed: 1
            }
        );
    }
}
