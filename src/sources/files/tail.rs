//! One tailed file: where it is read to, what is pending, and how a block of its bytes becomes
//! a chunk.
//!
//! Lines leave only whole. The read offset stops at the last newline of a block, so a line that
//! is still being written is read again, complete, on a later turn (no carry buffer). CRI partial
//! lines wait in [`Partials`]; the position sent with a chunk never passes the first of them, so
//! a restart re-reads them instead of losing them.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::entry::{Advance, AdvanceKind, Chunk, FileAdvance, FileKey, Fingerprint, LabelSet};
use crate::process::Processor;
use crate::sources::files::cri::{self, Partials};
use crate::sources::files::Format;
use crate::telemetry::metrics::METRICS;

/// The first pause of a polled file at its end; it doubles up to 8× (25 ms up to 200 ms), which
/// bounds the latency of a quiet file's next line.
const IDLE_STEP: Duration = Duration::from_millis(10);
/// A watched file at its end waits for discovery's wake (a write event, or a rescan that found
/// its size changed, which already covers a lost event within `tail.rescan`); this is only the
/// last resort. At 60 s, 2,000 quiet files cost 33 reads a second for nothing.
const WATCHED_IDLE: Duration = Duration::from_secs(300);
/// A CRI partial line with no `F` after this long is sent as it is: containerd writes output
/// that ends without a newline as `P`, often a container's last words.
pub const PARTIAL_FLUSH: Duration = Duration::from_secs(5);

/// What happens to a file when its path no longer names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Reachable under a path in the log tree: follow it.
    Live,
    /// Gone from the tree (deleted, or rotated away and compressed): read to the end through
    /// the open descriptor, then let go.
    Draining,
}

/// A line being gathered across reads.
struct LongLine {
    /// Its first byte's offset.
    start: u64,
    buf: Vec<u8>,
    /// Bytes past the limit were skipped.
    cut: bool,
    /// Already sent (the file went quiet before its newline): the rest of it is skipped.
    sent: bool,
}

/// Bytes kept past `max_line_size`: room for a CRI record's header, so that a cut record's
/// content is still over the limit and the line is marked truncated when it is cut to it.
const HEADER_ROOM: usize = 128;

impl LongLine {
    fn push(&mut self, bytes: &[u8], max_line: usize) {
        if self.sent {
            return;
        }
        let room = (max_line + HEADER_ROOM).saturating_sub(self.buf.len());
        if bytes.len() > room {
            self.cut = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

pub struct Tail {
    pub key: FileKey,
    pub path: Arc<Path>,
    pub labels: Arc<LabelSet>,
    pub format: Format,
    pub fingerprint: Fingerprint,
    pub file: Option<File>,
    pub life: Life,
    /// Next byte to read: just after the last whole line read.
    pub read_offset: u64,
    /// `to` of the last advance sent.
    sent_to: u64,
    /// The next advance restarts the chain (the file was truncated).
    restart: bool,
    partials: Partials,
    /// A line longer than one read (a record containerd did not split, an RKE2 line, junk
    /// without newlines), gathered across reads up to `max_line_size`; the rest is skipped.
    long: Option<LongLine>,
    /// Size at discovery's last scan, shared with it: a value, not a queue of messages, so a
    /// tailer paused by backpressure never piles up updates.
    pub size_hint: Arc<AtomicU64>,
    /// Read errors in a row, for rate-limited logging and giving up on a draining file.
    pub errors: u32,
    /// The timestamp of the last plain line that had one: a line without its own (a stack
    /// trace, a continued value) takes it. The read time would put it far after its
    /// neighbours, and Loki would then reject the rest of a backlog as too far behind.
    last_ts: Option<i64>,
    /// The largest size the file was seen to have since it was last cut: what a truncation
    /// loses is measured from it.
    max_size: u64,
    /// When to read next; pushed back while the file is at its end.
    pub next_check: Instant,
    pub idle_rounds: u32,
    pub last_read: Instant,
    /// Its directory has an inotify watch: at its end it waits to be woken, not polled.
    pub watched: bool,
    /// Woken since its last read: read it even if closed, and trust no stale size.
    pub woken: bool,
}

impl Tail {
    pub fn new(
        key: FileKey,
        path: Arc<Path>,
        labels: Arc<LabelSet>,
        format: Format,
        fingerprint: Fingerprint,
        start: u64,
        size_hint: Arc<AtomicU64>,
    ) -> Tail {
        let now = Instant::now();
        Tail {
            key,
            path,
            labels,
            format,
            fingerprint,
            file: None,
            life: Life::Live,
            read_offset: start,
            sent_to: start,
            restart: false,
            partials: Partials::default(),
            long: None,
            max_size: 0,
            size_hint,
            errors: 0,
            last_ts: None,
            next_check: now,
            idle_rounds: 0,
            last_read: now,
            watched: false,
            woken: false,
        }
    }

    /// Starts the position chain afresh: the stored position of this identity belongs to
    /// other content (a reused inode, or a file truncated while ringtail was down).
    pub fn restart_chain(&mut self) {
        self.restart = true;
    }

    /// At the end for now: a polled file is checked again after a pause that grows while it
    /// stays quiet; a watched one when it is woken, or when a pending partial line is due.
    pub fn idle(&mut self, now: Instant) {
        self.idle_rounds = self.idle_rounds.saturating_add(1);
        let pause = IDLE_STEP * 2u32.saturating_pow(self.idle_rounds.min(3));
        self.next_check = match (self.watched && self.life == Life::Live, self.has_pending()) {
            (false, _) => now + pause,
            (true, true) => (self.last_read + PARTIAL_FLUSH).max(now + pause),
            (true, false) => now + WATCHED_IDLE,
        };
    }

    /// The size discovery saw last.
    pub fn size_seen(&self) -> u64 {
        self.size_hint.load(Ordering::Relaxed)
    }

    /// True when a CRI partial line, or a long line being gathered, is waiting for its end.
    pub fn has_pending(&self) -> bool {
        self.partials.earliest_start().is_some() || self.long.as_ref().is_some_and(|l| !l.sent)
    }

    /// Sends pending partial lines as they are: the file ended (or went quiet) without their
    /// final `F`, as containerd leaves output that ends without a newline; and a long line
    /// gathered so far, marked truncated (the rest of it, if it comes, is skipped). Returns how
    /// many.
    pub fn flush_partials(&mut self, proc: &mut Processor, chunk: &mut Chunk) -> usize {
        let mut n = 0;
        if let Some(mut long) = self.long.take() {
            if !long.sent {
                let read_ns = crate::timefmt::now_ns();
                self.line(&long.buf, long.start, read_ns, true, proc, chunk);
                long.sent = true;
                long.buf = Vec::new();
                n += 1;
            }
            self.long = Some(long);
        }
        self.partials
            .take_pending(|stream, ts_ns, content, truncated| {
                proc.pod_line(chunk, ts_ns, stream, content, truncated);
                n += 1;
            });
        self.set_advance(chunk, AdvanceKind::Continue);
        n
    }

    /// For a file that is gone and will not grow: the bytes after the last newline are its last
    /// line. Sends it, then any pending partials, and moves to the end.
    pub fn consume_rest(&mut self, buf: &[u8], proc: &mut Processor, chunk: &mut Chunk) {
        let read_ns = crate::timefmt::now_ns();
        if let Some(mut long) = self.long.take() {
            if !long.sent {
                long.push(buf, proc.max_line());
                self.line(&long.buf, long.start, read_ns, long.cut, proc, chunk);
            }
        } else if !buf.is_empty() {
            self.line(buf, self.read_offset, read_ns, false, proc, chunk);
        }
        self.read_offset += buf.len() as u64;
        self.flush_partials(proc, chunk);
    }

    /// One line; `cut`: its end was skipped (it was longer than `max_line_size` allows).
    fn line(
        &mut self,
        line: &[u8],
        offset: u64,
        read_ns: i64,
        cut: bool,
        proc: &mut Processor,
        chunk: &mut Chunk,
    ) {
        if self.format == Format::Plain {
            let fallback = self.last_ts.unwrap_or(read_ns);
            if let Some(ts) = proc.plain_line(chunk, read_ns, fallback, line, cut) {
                self.last_ts = Some(ts);
            }
            return;
        }
        match cri::parse(line) {
            Some(rec) => {
                let stream = rec.stream;
                if let Some(j) = self.partials.feed(rec, offset, proc.max_line()) {
                    proc.pod_line(chunk, j.ts_ns, stream, j.content, j.truncated || cut);
                }
            }
            None => proc.malformed_line(chunk, read_ns, line, cut),
        }
    }

    /// Records a size the file was seen to have (discovery's scan, or the end of a read).
    pub fn note_size(&mut self, size: u64) {
        self.max_size = self.max_size.max(size);
    }

    /// The file shrank below what was read: copytruncate or a rewrite. Start again at 0.
    /// Returns the bytes it was seen to hold past the read offset before it was cut: lost, at
    /// least (it may have grown more between the last look and the cut).
    pub fn truncated(&mut self, new_size: u64) -> u64 {
        let lost = self.max_size.saturating_sub(self.read_offset);
        self.max_size = new_size;
        self.read_offset = 0;
        self.restart = true;
        self.partials.clear();
        self.long = None;
        self.fingerprint = Fingerprint::default();
        lost
    }

    /// Turns `buf`, read at `read_offset`, into entries of `chunk` and sets the chunk's advance.
    /// `full` says the read filled the buffer (there may be more right away).
    pub fn consume(&mut self, buf: &[u8], full: bool, proc: &mut Processor, chunk: &mut Chunk) {
        let base = self.read_offset;
        if base == 0 && !self.fingerprint.is_complete() && buf.len() > self.fingerprint.len as usize
        {
            self.fingerprint = Fingerprint::of(buf);
        }
        let read_ns = crate::timefmt::now_ns();
        let mut pos = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            let line = &buf[pos..nl];
            let offset = base + pos as u64;
            pos = nl + 1;
            if let Some(mut long) = self.long.take() {
                if !long.sent {
                    long.push(line, proc.max_line());
                    self.line(&long.buf, long.start, read_ns, long.cut, proc, chunk);
                }
                continue;
            }
            self.line(line, offset, read_ns, false, proc, chunk);
        }
        if pos == 0 && full && !buf.is_empty() {
            // A whole buffer without a newline: a line longer than a read. Gather it (up to
            // max_line_size) until its newline comes; the position stays at its start, so a
            // restart reads it again.
            let long = self.long.get_or_insert_with(|| {
                METRICS.file_event("overlong_record");
                LongLine {
                    start: base,
                    buf: Vec::new(),
                    cut: false,
                    sent: false,
                }
            });
            long.push(buf, proc.max_line());
            pos = buf.len();
            if long.cut && !long.sent {
                // Past max_line_size already: what is kept is final, so it goes now (a 100 GiB
                // file of zeros must not wait for its end), and the rest of it is skipped.
                if let Some(mut long) = self.long.take() {
                    self.line(&long.buf, long.start, read_ns, true, proc, chunk);
                    long.sent = true;
                    long.buf = Vec::new();
                    self.long = Some(long);
                }
            }
        }
        self.read_offset = base + pos as u64;
        self.note_size(base + buf.len() as u64);
        // A joined line's buffer is kept only while a line is pending: lines long enough to be
        // split are rare, and on a node with 10,000 files, each keeping the largest it ever
        // joined was a third of ringtail's memory (BENCHMARKS.md).
        self.partials.release_idle();
        self.set_advance(chunk, AdvanceKind::Continue);
    }

    /// Sets the chunk's advance to the current safe position.
    pub fn set_advance(&mut self, chunk: &mut Chunk, kind: AdvanceKind) {
        let safe = self.safe_position();
        let kind = match (kind, self.restart) {
            (AdvanceKind::Continue, true) => AdvanceKind::Restart,
            (k, _) => k,
        };
        let from = if kind == AdvanceKind::Restart {
            0
        } else {
            self.sent_to
        };
        self.restart = false;
        chunk.advance = Some(Advance::File(FileAdvance {
            source: self.format.source(),
            file: self.key,
            path: self.path.clone(),
            fingerprint: self.fingerprint,
            from,
            to: safe.max(from),
            kind,
        }));
        self.sent_to = safe.max(from);
    }

    /// True when the last advance sent already covers everything read.
    pub fn nothing_to_advance(&self) -> bool {
        !self.restart && self.sent_to == self.safe_position()
    }

    /// Where a restart may begin without losing a line: the read offset, or the start of a
    /// pending CRI partial or of a long line being gathered.
    fn safe_position(&self) -> u64 {
        self.partials
            .earliest_start()
            .unwrap_or(self.read_offset)
            .min(self.read_offset)
            .min(
                self.long
                    .as_ref()
                    .filter(|l| !l.sent)
                    .map_or(u64::MAX, |l| l.start),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JsonLine;

    fn tail() -> Tail {
        Tail::new(
            FileKey { dev: 1, ino: 2 },
            Arc::from(Path::new("/p/0.log")),
            LabelSet::new([("pod", "p".to_string())]),
            Format::Cri,
            Fingerprint::default(),
            0,
            Arc::new(AtomicU64::new(0)),
        )
    }

    fn lines(c: &Chunk) -> Vec<String> {
        c.entries
            .iter()
            .map(|e| c.str(e.line).to_string())
            .collect()
    }

    /// The structured metadata of entry `i`.
    fn meta(c: &Chunk, i: usize) -> Vec<(&'static str, String)> {
        c.meta_of(&c.entries[i])
            .iter()
            .map(|(k, v)| (k.as_str(), c.meta_str(v).to_string()))
            .collect()
    }

    #[test]
    fn whole_lines_only_and_positions_stop_at_partials() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        let data = b"2024-11-25T10:00:00Z stdout F one\n2024-11-25T10:00:01Z stdout P tw\n2024-11-25T10:00:02Z stderr F err\n2024-11-25T10:00:03Z stdout F";
        t.consume(data, false, &mut p, &mut c);
        assert_eq!(lines(&c), ["one", "err"]);
        let first_p = data.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
        let a = c.advance.clone().unwrap().as_file().cloned().unwrap();
        assert_eq!((a.from, a.to, a.kind), (0, first_p, AdvanceKind::Continue));
        // The unterminated tail is read again next time, completed.
        let tail_start = data.iter().rposition(|&b| b == b'\n').unwrap() as u64 + 1;
        assert_eq!(t.read_offset, tail_start);

        let mut c2 = Chunk::new(t.labels.clone());
        t.consume(b"2024-11-25T10:00:03Z stdout F o\n", false, &mut p, &mut c2);
        assert_eq!(lines(&c2), ["two"]);
        let a = c2.advance.unwrap().as_file().cloned().unwrap();
        assert_eq!((a.from, a.to), (first_p, tail_start + 32));
        assert_eq!(c2.entries[0].ts_ns, 1_732_528_801_000_000_000);
    }

    #[test]
    fn a_line_longer_than_a_read_is_gathered_and_cut_at_max_line_size() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        t.consume(&[b'x'; 600], true, &mut p, &mut c);
        // Nothing yet, and the position stays at the line's start until it is whole.
        assert!(c.entries.is_empty());
        assert_eq!(t.read_offset, 600);
        assert_eq!(c.advance.unwrap().as_file().unwrap().to, 0);
        // Past max_line_size: what is kept is final, so it goes at once, cut and marked.
        let mut c = Chunk::new(t.labels.clone());
        t.consume(&[b'x'; 600], true, &mut p, &mut c);
        assert_eq!(lines(&c), ["x".repeat(1000).as_str()]);
        let meta = meta(&c, 0);
        assert_eq!(meta, [("truncated", "true".to_string())]);
        assert_eq!(c.advance.unwrap().as_file().unwrap().to, 1200);
        // The rest of it is skipped.
        let mut c = Chunk::new(t.labels.clone());
        t.consume(&[b'x'; 600], true, &mut p, &mut c);
        assert!(c.entries.is_empty());
        let mut c2 = Chunk::new(t.labels.clone());
        t.consume(
            b"xxxx\n2024-11-25T10:00:00Z stdout F ok\n",
            false,
            &mut p,
            &mut c2,
        );
        assert_eq!(lines(&c2), ["ok"]);
        assert_eq!(c2.advance.unwrap().as_file().unwrap().to, 1800 + 5 + 33);
    }

    #[test]
    fn a_long_line_within_max_line_size_is_sent_whole() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        let mut rec = b"2024-11-25T10:00:00Z stdout F ".to_vec();
        rec.extend_from_slice(&[b'w'; 500]);
        t.consume(&rec, true, &mut p, &mut c);
        assert!(c.entries.is_empty());
        t.consume(b"www\n", false, &mut p, &mut c);
        assert_eq!(lines(&c), ["w".repeat(503).as_str()]);
        assert_eq!(
            c.meta_of(&c.entries[0]).len(),
            1,
            "stream only, not truncated"
        );
    }

    #[test]
    fn a_pending_partial_is_flushed_and_the_position_passes_it() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        let data = b"2024-11-25T10:00:00Z stdout P last words\n";
        t.consume(data, false, &mut p, &mut c);
        assert!(c.entries.is_empty() && t.has_pending());
        assert_eq!(c.advance.unwrap().as_file().unwrap().to, 0);
        let mut c2 = Chunk::new(t.labels.clone());
        assert_eq!(t.flush_partials(&mut p, &mut c2), 1);
        assert_eq!(lines(&c2), ["last words"]);
        assert_eq!(
            c2.advance.unwrap().as_file().cloned().unwrap().to,
            data.len() as u64
        );
    }

    #[test]
    fn the_rest_of_a_gone_file_is_its_last_line() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        t.consume_rest(b"2024-11-25T10:00:00Z stderr F no newline", &mut p, &mut c);
        assert_eq!(lines(&c), ["no newline"]);
        assert_eq!(c.advance.unwrap().as_file().unwrap().to, 40);
    }

    #[test]
    fn a_long_line_that_goes_quiet_is_sent_once_and_its_rest_skipped() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        t.consume(&[b'z'; 300], true, &mut p, &mut c);
        assert!(t.has_pending());
        assert_eq!(t.flush_partials(&mut p, &mut c), 1);
        assert_eq!(lines(&c), ["z".repeat(300).as_str()]);
        assert!(!t.has_pending());
        // Sent: the position may pass it.
        assert_eq!(c.advance.unwrap().as_file().unwrap().to, 300);
        let mut c2 = Chunk::new(t.labels.clone());
        t.consume(
            b"zzz rest\n2024-11-25T10:00:00Z stdout F next\n",
            false,
            &mut p,
            &mut c2,
        );
        assert_eq!(lines(&c2), ["next"]);
    }

    #[test]
    fn an_overlong_record_keeps_its_header() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 100);
        let mut rec = b"2024-11-25T10:00:00Z stderr F ".to_vec();
        rec.extend_from_slice(&[b'y'; 300]);
        let mut c = Chunk::new(t.labels.clone());
        t.consume(&rec, true, &mut p, &mut c);
        assert_eq!(c.entries[0].ts_ns, 1_732_528_800_000_000_000);
        assert_eq!(lines(&c)[0], "y".repeat(100));
        let meta = meta(&c, 0);
        assert_eq!(
            meta,
            [
                ("stream", "stderr".to_string()),
                ("truncated", "true".to_string())
            ]
        );
        let mut c2 = Chunk::new(t.labels.clone());
        t.consume(b"yyyy\n", false, &mut p, &mut c2);
        assert!(c2.entries.is_empty(), "the rest of it is skipped");
    }

    #[test]
    fn plain_lines_get_their_header() {
        let mut t = tail();
        t.format = Format::Plain;
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        t.consume(
            b"time=\"2024-11-25T10:00:00Z\" level=error msg=\"x\"\nno header\n",
            false,
            &mut p,
            &mut c,
        );
        assert_eq!(
            lines(&c),
            [
                "time=\"2024-11-25T10:00:00Z\" level=error msg=\"x\"",
                "no header"
            ]
        );
        assert_eq!(c.entries[0].ts_ns, 1_732_528_800_000_000_000);
        let meta = meta(&c, 0);
        assert_eq!(meta, [("level", "error".to_string())]);
        assert!(c.meta_of(&c.entries[1]).is_empty());
    }

    #[test]
    fn truncation_restarts_the_chain() {
        let mut t = tail();
        let mut p = Processor::new(JsonLine::Raw, 1000);
        let mut c = Chunk::new(t.labels.clone());
        t.consume(
            b"2024-11-25T10:00:00Z stdout F one\n",
            false,
            &mut p,
            &mut c,
        );
        // Everything it saw was read: nothing known lost. Had it seen the file at 50 bytes, the
        // 16 past what it read would be.
        assert_eq!(t.truncated(10), 0);
        let mut c0 = Chunk::new(t.labels.clone());
        t.consume(
            b"2024-11-25T10:00:00Z stdout F one\n",
            false,
            &mut p,
            &mut c0,
        );
        t.note_size(50);
        assert_eq!(t.truncated(10), 16);
        let mut c2 = Chunk::new(t.labels.clone());
        t.consume(
            b"2024-11-25T10:00:00Z stdout F new\n",
            false,
            &mut p,
            &mut c2,
        );
        let a = c2.advance.unwrap().as_file().cloned().unwrap();
        assert_eq!((a.from, a.to, a.kind), (0, 34, AdvanceKind::Restart));
    }
}
