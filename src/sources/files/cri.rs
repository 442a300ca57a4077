//! containerd's CRI log format: `<RFC3339Nano ts> <stdout|stderr> <tags> <content>`, one record
//! per line, where the first `:`-separated tag is `P` (partial) or `F` (full). containerd splits
//! lines longer than 16 KiB into `P` records ending with an `F` (protocol-facts §4.1).
//!
//! [`Partials`] joins `P…P F` per stream. Its buffers are bounded by `max_line_size`: past it the
//! rest is dropped and the line is marked truncated (ripgrep's "growth is a policy with a limit").

use crate::process::Stream;
use crate::timefmt::parse_rfc3339_ns;

/// One parsed record; `content` borrows the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub ts_ns: i64,
    pub stream: Stream,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one CRI record (without its `\n`); `None` when the line is not one.
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let sp1 = memchr::memchr(b' ', line)?;
    let ts_ns = parse_rfc3339_ns(&line[..sp1])?;
    let rest = &line[sp1 + 1..];
    let (stream, rest) = if let Some(r) = rest.strip_prefix(b"stdout ") {
        (Stream::Stdout, r)
    } else if let Some(r) = rest.strip_prefix(b"stderr ") {
        (Stream::Stderr, r)
    } else {
        return None;
    };
    // Tags run to the next space; content is everything after it (possibly empty, and the space
    // itself may be missing when the content is empty).
    let (tags, content) = match memchr::memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let first = tags.split(|&b| b == b':').next().unwrap_or(&[]);
    let partial = match first {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Record {
        ts_ns,
        stream,
        partial,
        content,
    })
}

/// A line being joined from `P` records.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    ts_ns: i64,
    /// File offset of the first `P` record: the restart point while this line is pending.
    start: u64,
    truncated: bool,
    active: bool,
}

/// Partial lines of one file, per stream.
#[derive(Debug, Default)]
pub struct Partials {
    pending: [Pending; 2],
}

/// A complete line, ready to process.
pub struct Joined<'a> {
    pub ts_ns: i64,
    pub content: &'a [u8],
    pub truncated: bool,
}

impl Partials {
    /// Feeds a record found at file offset `offset`; returns the complete line when `rec` is the
    /// `F` that ends it (or a whole line by itself). The line's timestamp is its first record's.
    pub fn feed<'a>(&'a mut self, rec: Record<'a>, offset: u64, max: usize) -> Option<Joined<'a>> {
        let p = &mut self.pending[rec.stream.index()];
        if !p.active {
            if !rec.partial {
                return Some(Joined {
                    ts_ns: rec.ts_ns,
                    content: rec.content,
                    truncated: false,
                });
            }
            p.active = true;
            p.ts_ns = rec.ts_ns;
            p.start = offset;
            p.truncated = false;
            p.buf.clear();
        }
        let room = max.saturating_sub(p.buf.len());
        if rec.content.len() > room {
            p.buf.extend_from_slice(&rec.content[..room]);
            p.truncated = true;
        } else {
            p.buf.extend_from_slice(rec.content);
        }
        if rec.partial {
            return None;
        }
        p.active = false;
        Some(Joined {
            ts_ns: p.ts_ns,
            content: &p.buf,
            truncated: p.truncated,
        })
    }

    /// The offset of the earliest pending line, if any: a position must not pass it.
    pub fn earliest_start(&self) -> Option<u64> {
        self.pending
            .iter()
            .filter(|p| p.active)
            .map(|p| p.start)
            .min()
    }

    /// Hands over every pending line (in order of their start) and forgets them.
    pub fn take_pending(&mut self, mut f: impl FnMut(Stream, i64, &[u8], bool)) {
        let mut order: Vec<usize> = (0..2).filter(|&i| self.pending[i].active).collect();
        order.sort_by_key(|&i| self.pending[i].start);
        for i in order {
            let p = &mut self.pending[i];
            p.active = false;
            let stream = if i == Stream::Stdout.index() {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            f(stream, p.ts_ns, &p.buf, p.truncated);
        }
    }

    /// Forgets pending lines (the file was truncated), and gives back buffers grown by a long
    /// line so an idle file does not hold them.
    pub fn clear(&mut self) {
        for p in &mut self.pending {
            p.active = false;
            p.buf = Vec::new();
        }
    }

    /// Releases the buffer of streams with nothing pending.
    pub fn release_idle(&mut self) {
        for p in &mut self.pending {
            if !p.active && p.buf.capacity() > 0 {
                p.buf = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let r = parse(b"2024-11-25T10:00:00.5Z stdout F hello world").unwrap();
        assert_eq!(r.ts_ns, 1_732_528_800_500_000_000);
        assert_eq!(r.stream, Stream::Stdout);
        assert!(!r.partial);
        assert_eq!(r.content, b"hello world");

        let r = parse(b"2024-11-25T11:00:00+01:00 stderr P:x:y  two spaces").unwrap();
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.content, b" two spaces");

        assert_eq!(
            parse(b"2024-11-25T10:00:00Z stdout F").unwrap().content,
            b""
        );
        assert_eq!(
            parse(b"2024-11-25T10:00:00Z stdout F ").unwrap().content,
            b""
        );
    }

    #[test]
    fn rejects_what_is_not_cri() {
        for bad in [
            &b""[..],
            b"plain text line",
            b"2024-11-25T10:00:00Z stdin F x",
            b"2024-11-25T10:00:00Z stdout X x",
            b"yesterday stdout F x",
            b"2024-11-25T10:00:00Z",
        ] {
            assert!(parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn rec(stream: Stream, partial: bool, content: &[u8], ts: i64) -> Record<'_> {
        Record {
            ts_ns: ts,
            stream,
            partial,
            content,
        }
    }

    #[test]
    fn joins_partials_per_stream() {
        let mut p = Partials::default();
        assert!(p
            .feed(rec(Stream::Stdout, true, b"ab", 1), 0, 100)
            .is_none());
        assert_eq!(p.earliest_start(), Some(0));
        let j = p
            .feed(rec(Stream::Stderr, false, b"err", 2), 10, 100)
            .unwrap();
        assert_eq!((j.ts_ns, j.content), (2, &b"err"[..]));
        assert!(p
            .feed(rec(Stream::Stdout, true, b"cd", 3), 20, 100)
            .is_none());
        let j = p
            .feed(rec(Stream::Stdout, false, b"ef", 4), 30, 100)
            .unwrap();
        assert_eq!(
            (j.ts_ns, j.content, j.truncated),
            (1, &b"abcdef"[..], false)
        );
        assert_eq!(p.earliest_start(), None);
    }

    #[test]
    fn bounds_the_buffer_and_marks_truncation() {
        let mut p = Partials::default();
        for i in 0..10 {
            assert!(p
                .feed(rec(Stream::Stdout, true, b"0123456789", i), i as u64, 25)
                .is_none());
        }
        let j = p
            .feed(rec(Stream::Stdout, false, b"end", 10), 99, 25)
            .unwrap();
        assert_eq!(j.content, b"0123456789012345678901234");
        assert!(j.truncated);
        // The next line starts clean.
        let j = p
            .feed(rec(Stream::Stdout, false, b"next", 11), 120, 25)
            .unwrap();
        assert!(!j.truncated);
    }
}
