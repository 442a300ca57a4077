//! Lines of a rotated file that kubelet compressed while ringtail was down.
//!
//! At each rotation kubelet gzips every rotated file but the newest (`X` → `X.tmp` → `X.gz`,
//! then removes `X`); lumberjack does the same to RKE2's `containerd.log` backups. Stopped
//! across two rotations of a busy container, ringtail finds its position's file gone, and the
//! lines after the position only in `X.gz`. At start, for each such position, discovery asks
//! its catalog for the `.gz` files beside it named as that file's rotations are once compressed
//! ([`Catalog::compressed_copies`](super::discover::Catalog::compressed_copies)), and [`find`]
//! takes the one whose decompressed first bytes have the position's fingerprint. A `.gz` that
//! is no position's continuation is never read.
//!
//! The `.gz` then stands in positions for the file it holds: its own identity and path, with
//! the file's offset and fingerprint (`Positions::carry_over`, before the writer starts). A
//! restart in the middle of a recovery resumes it where the acks got to, and a drained one ends
//! with a `Done` advance like any finished file: its position is dropped, and no position points
//! at it any more, so it is never read twice.
//!
//! One thread reads the recoveries one after the other, through one read buffer: the decoder
//! streams, and what is skipped up to the offset is decompressed and thrown away, never held.
//! Lines are cut and parsed by the tailers' own [`Tail`]; where a tailer rereads an unfinished
//! line from the file, this reader keeps it at the front of its buffer. A corrupt or truncated
//! gzip is logged with its path and counted, the lines before the damage are shipped, and the
//! rest of the node goes on.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use crate::entry::{AdvanceKind, FileKey, Fingerprint, LabelSet};
use crate::positions::store::FilePos;
use crate::process::Processor;
use crate::ring::RingTx;
use crate::shutdown::Stop;
use crate::sources::files::schedule::READ_SIZE;
use crate::sources::files::tail::Tail;
use crate::sources::files::Format;
use crate::telemetry::metrics::{Metrics, METRICS};

/// A `.gz` that continues a file gone while ringtail was down.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The gone file's identity, whose position this one replaces.
    pub was: FileKey,
    /// The `.gz`'s identity and path, with the gone file's offset and fingerprint.
    pub pos: FilePos,
    pub labels: Arc<LabelSet>,
    pub format: Format,
}

/// What a look for a gone file's compressed copy came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Search {
    Found {
        path: PathBuf,
        key: FileKey,
    },
    /// No candidate holds it; the candidates that could not be decompressed, with why.
    NotFound {
        unreadable: Vec<(PathBuf, String)>,
    },
    /// The position has no fingerprint (nothing of the file had been read): no copy can be
    /// told to be its.
    NoFingerprint,
}

/// Which of `candidates` holds the file of position `p`: the first whose decompressed first
/// bytes have its fingerprint, skipping those in `claimed` (taken by another position).
pub fn find(p: &FilePos, candidates: &[PathBuf], claimed: &HashSet<FileKey>) -> Search {
    let fp = p.fingerprint();
    if fp.len == 0 {
        return Search::NoFingerprint;
    }
    let mut unreadable = Vec::new();
    for path in candidates {
        match head_of(path, fp.len as usize) {
            Ok((key, head)) => {
                if !claimed.contains(&key)
                    && head.len() == fp.len as usize
                    && Fingerprint::of(&head) == fp
                {
                    return Search::Found {
                        path: path.clone(),
                        key,
                    };
                }
            }
            Err(e) => unreadable.push((path.clone(), e.to_string())),
        }
    }
    Search::NotFound { unreadable }
}

/// A `.gz` file's identity and the first `len` bytes of what it holds.
fn head_of(path: &Path, len: usize) -> io::Result<(FileKey, Vec<u8>)> {
    let file = std::fs::File::open(path)?;
    let m = file.metadata()?;
    let key = FileKey {
        dev: m.dev(),
        ino: m.ino(),
    };
    let mut head = Vec::with_capacity(len);
    MultiGzDecoder::new(file)
        .take(len as u64)
        .read_to_end(&mut head)?;
    Ok((key, head))
}

/// Ships what each recovery holds past its offset, one after the other. Returns early when
/// ringtail stops: what was acked is committed, and the next start resumes there.
pub fn run(recoveries: Vec<Recovery>, mut proc: Processor, mut ring: RingTx, stop: &Stop) {
    ring.set_busy(true);
    let mut buf = vec![0u8; READ_SIZE];
    for r in recoveries {
        if drain(r, &mut buf, &mut proc, &ring, stop).is_none() {
            return;
        }
    }
    ring.set_busy(false);
}

/// How a drain ended.
#[derive(Debug)]
pub enum End {
    Complete,
    /// The gzip is damaged: lines before the damage were shipped.
    Corrupt(io::Error),
    /// It holds fewer bytes than the position says were read.
    Short(u64),
    /// It was deleted or replaced before it could be opened.
    Gone(io::Error),
}

/// One recovery, from its offset to its end, logged and counted; `None` when ringtail is
/// stopping.
fn drain(
    r: Recovery,
    buf: &mut [u8],
    proc: &mut Processor,
    ring: &RingTx,
    stop: &Stop,
) -> Option<End> {
    let key = r.pos.key();
    let path: Arc<Path> = Arc::from(r.pos.path.as_path());
    let mut tail = Tail::new(
        key,
        path.clone(),
        r.labels,
        r.format,
        r.pos.fingerprint(),
        r.pos.offset,
        Arc::new(AtomicU64::new(0)),
    );
    let lines_before = proc.counts.lines;
    let end = match open(&path, key) {
        Ok(file) => read_from(MultiGzDecoder::new(file), &mut tail, buf, proc, ring, stop)?,
        Err(e) => End::Gone(e),
    };
    let lines = proc.counts.lines - lines_before;
    METRICS.recovered_lines.inc_by(lines);
    match &end {
        End::Complete if lines == 0 => {
            METRICS.file_event("compressed_drained");
            log::debug!(
                "{}: nothing after byte {}; it had been read to its end",
                path.display(),
                r.pos.offset
            );
        }
        End::Complete => {
            METRICS.file_event("compressed_drained");
            log::info!(
                "recovered {lines} lines from {} (from byte {} of what it holds to its end): \
                 kubelet compressed it while ringtail was down",
                path.display(),
                r.pos.offset
            );
        }
        End::Corrupt(e) => {
            METRICS.file_event("compressed_corrupt");
            log::warn!(
                "{} is a damaged gzip ({e}): shipped the {lines} lines before the damage, from \
                 byte {}; the rest of it cannot be read",
                path.display(),
                r.pos.offset
            );
        }
        End::Short(held) => {
            METRICS.file_event("compressed_corrupt");
            log::warn!(
                "{} holds {held} bytes, fewer than the {} already read from the file it was \
                 compressed from: it is truncated, so nothing more can be read from it",
                path.display(),
                r.pos.offset
            );
        }
        End::Gone(e) => {
            METRICS.file_event("gone_while_down");
            log::warn!(
                "cannot open {} to recover the lines after byte {} of the file compressed into \
                 it ({e}): kubelet deleted it first; those lines were not shipped",
                path.display(),
                r.pos.offset
            );
        }
    }
    let mut chunk = ring.chunk(tail.labels.clone());
    tail.set_advance(&mut chunk, AdvanceKind::Done);
    ring.send(chunk, stop).then_some(end)
}

/// Opens the `.gz` if it is still the file `key`.
fn open(path: &Path, key: FileKey) -> io::Result<std::fs::File> {
    let file = std::fs::File::open(path)?;
    let m = file.metadata()?;
    if m.dev() != key.dev || m.ino() != key.ino {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "another file has its name now",
        ));
    }
    Ok(file)
}

/// Skips to the tail's offset in `src` (a decompressed stream), then turns the rest into chunks
/// through `buf`. Returns how it ended; `None` when ringtail is stopping. (Public for the `gz`
/// fuzz target.)
pub fn read_from(
    mut src: impl Read,
    tail: &mut Tail,
    buf: &mut [u8],
    proc: &mut Processor,
    ring: &RingTx,
    stop: &Stop,
) -> Option<End> {
    let offset = tail.read_offset;
    match io::copy(&mut (&mut src).take(offset), &mut io::sink()) {
        Ok(n) if n < offset => return Some(End::Short(n)),
        Ok(_) => {}
        Err(e) => return Some(End::Corrupt(e)),
    }
    let mut out = Out {
        bytes: Metrics::source_counter(&METRICS.read_bytes, tail.format.source()),
        lines: Metrics::source_counter(&METRICS.read_lines, tail.format.source()),
        proc,
        ring,
        stop,
    };
    // `buf[..filled]` holds the bytes from `tail.read_offset` on.
    let mut filled = 0;
    loop {
        let mut failed = None;
        let mut at_end = false;
        while filled < buf.len() {
            match src.read(&mut buf[filled..]) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let full = filled == buf.len();
        let used = out.ship(tail, &buf[..filled], Cut::Lines { full })?;
        buf.copy_within(used..filled, 0);
        filled -= used;
        if let Some(e) = failed {
            // The bytes of the line the damage cut are dropped; partial lines before it go.
            out.ship(tail, &[], Cut::Flush)?;
            return Some(End::Corrupt(e));
        }
        if at_end {
            // Nothing more will be written to it: the bytes after its last newline are its last
            // line.
            out.ship(tail, &buf[..filled], Cut::Rest)?;
            return Some(End::Complete);
        }
    }
}

/// How [`Out::ship`] cuts bytes into lines.
enum Cut {
    /// Whole lines; `full`: the bytes fill the buffer (a line may be longer than it).
    Lines { full: bool },
    /// The bytes after the last newline of a file that ended: its last line.
    Rest,
    /// No bytes: the partial lines still waiting, as they are.
    Flush,
}

/// Where a drain's chunks go, and what it counts.
struct Out<'a> {
    bytes: prometheus_client::metrics::counter::Counter,
    lines: prometheus_client::metrics::counter::Counter,
    proc: &'a mut Processor,
    ring: &'a RingTx,
    stop: &'a Stop,
}

impl Out<'_> {
    /// One chunk of `bytes` (read at the tail's offset); returns how many it used, `None` when
    /// ringtail is stopping.
    fn ship(&mut self, tail: &mut Tail, bytes: &[u8], cut: Cut) -> Option<usize> {
        let mut chunk = self.ring.chunk(tail.labels.clone());
        let before = self.proc.counts;
        let base = tail.read_offset;
        match cut {
            Cut::Lines { full } => tail.consume(bytes, full, self.proc, &mut chunk),
            Cut::Rest => tail.consume_rest(bytes, self.proc, &mut chunk),
            Cut::Flush => {
                tail.flush_partials(self.proc, &mut chunk);
            }
        }
        self.proc.end_chunk();
        let used = (tail.read_offset - base) as usize;
        self.bytes.inc_by(used as u64);
        self.lines.inc_by(self.proc.counts.lines - before.lines);
        METRICS.add_line_counts(before, self.proc.counts);
        self.ring.send(chunk, self.stop).then_some(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JsonLine;
    use crate::entry::Chunk;
    use crate::ring::ring;
    use flate2::write::GzEncoder;
    use std::io::Write;
    use std::time::Duration;

    fn cri(lines: std::ops::Range<usize>) -> Vec<u8> {
        lines
            .map(|i| format!("2026-12-07T10:00:00Z stdout F line {i}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn gzip(path: &Path, data: &[u8]) -> FileKey {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        std::fs::write(path, e.finish().unwrap()).unwrap();
        let m = std::fs::metadata(path).unwrap();
        FileKey {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// The position of a file whose first bytes were `data`'s and that was read to `offset`.
    fn position(data: &[u8], offset: u64) -> FilePos {
        let fp = Fingerprint::of(data);
        FilePos {
            path: PathBuf::from("/pods/ns_p_u/c/0.log"),
            dev: 1,
            ino: 2,
            fp_len: fp.len,
            fp_hash: fp.hash,
            offset,
        }
    }

    #[test]
    fn only_the_copy_with_the_positions_fingerprint_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let ours = cri(0..100);
        let foreign = dir.path().join("0.log.20261207-090000.gz");
        let copy = dir.path().join("0.log.20261207-100000.gz");
        let damaged = dir.path().join("0.log.20261207-110000.gz");
        gzip(&foreign, &cri(1000..1100));
        let key = gzip(&copy, &ours);
        std::fs::write(&damaged, b"\x1f\x8b not a gzip stream").unwrap();
        let all = [foreign.clone(), copy.clone(), damaged.clone()];
        let p = position(&ours, 500);
        assert_eq!(
            find(&p, &all, &HashSet::new()),
            Search::Found {
                path: copy.clone(),
                key
            }
        );
        // Taken by another position: not this one's.
        match find(&p, &all, &HashSet::from([key])) {
            Search::NotFound { unreadable } => {
                assert_eq!(unreadable.len(), 1);
                assert_eq!(unreadable[0].0, damaged);
            }
            other => panic!("{other:?}"),
        }
        // A file shorter than its fingerprint's length cannot be the one.
        let mut long = p.clone();
        long.fp_len = ours.len() as u32 + 1;
        assert!(matches!(
            find(&long, &all, &HashSet::new()),
            Search::NotFound { .. }
        ));
        let mut unread = p;
        unread.fp_len = 0;
        assert_eq!(find(&unread, &all, &HashSet::new()), Search::NoFingerprint);
    }

    /// Drains `gz` (holding `data`) from `offset` through a `buf_len`-byte buffer: the lines it
    /// shipped, the advances, and how it ended.
    fn drain_file(
        gz: &Path,
        data: &[u8],
        offset: u64,
        buf_len: usize,
    ) -> (Vec<String>, Vec<(u64, u64, AdvanceKind)>, End) {
        let m = std::fs::metadata(gz).unwrap();
        let mut pos = position(data, offset);
        (pos.path, pos.dev, pos.ino) = (gz.to_path_buf(), m.dev(), m.ino());
        let r = Recovery {
            was: FileKey { dev: 1, ino: 2 },
            pos,
            labels: LabelSet::new([("pod", "p".to_string())]),
            format: Format::Cri,
        };
        let (tx, rx) = ring(1024);
        let mut proc = Processor::new(JsonLine::Raw, 1 << 20);
        let mut buf = vec![0u8; buf_len];
        let end = drain(r, &mut buf, &mut proc, &tx, &Stop::default()).expect("not stopping");
        let (mut lines, mut advances) = (Vec::new(), Vec::new());
        while let Ok(c) = rx.recv_timeout(Duration::ZERO) {
            let c: Chunk = c;
            lines.extend(c.entries.iter().map(|e| c.str(e.line).to_string()));
            let a = c
                .advance
                .as_ref()
                .and_then(|a| a.as_file())
                .unwrap()
                .clone();
            advances.push((a.from, a.to, a.kind));
        }
        (lines, advances, end)
    }

    fn numbered(lines: std::ops::Range<usize>) -> Vec<String> {
        lines.map(|i| format!("line {i}")).collect()
    }

    #[test]
    fn what_follows_the_offset_is_shipped_once_through_a_small_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let data = cri(0..300);
        let gz = dir.path().join("0.log.20261207-100000.gz");
        gzip(&gz, &data);
        let offset = cri(0..120).len() as u64;
        // 100 bytes: lines are cut across reads, and kept at the buffer's front.
        let (lines, advances, end) = drain_file(&gz, &data, offset, 100);
        assert!(matches!(end, End::Complete), "{end:?}");
        assert_eq!(lines, numbered(120..300));
        // The advances chain from the offset to the end, then let the file go.
        assert_eq!(advances[0].0, offset);
        for w in advances.windows(2) {
            assert_eq!(w[0].1, w[1].0, "{advances:?}");
        }
        let last = advances.last().unwrap();
        assert_eq!((last.1, last.2), (data.len() as u64, AdvanceKind::Done));
    }

    #[test]
    fn a_last_line_without_a_newline_is_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = cri(0..10);
        data.extend_from_slice(b"2026-12-07T10:00:00Z stdout F line 10");
        let gz = dir.path().join("0.log.20261207-100000.gz");
        gzip(&gz, &data);
        let (lines, _, end) = drain_file(&gz, &data, 0, READ_SIZE);
        assert!(matches!(end, End::Complete), "{end:?}");
        assert_eq!(lines, numbered(0..11));
    }

    #[test]
    fn a_damaged_gzip_ships_the_lines_before_the_damage_and_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = cri(0..20_000);
        let gz = dir.path().join("0.log.20261207-100000.gz");
        gzip(&gz, &data);
        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let (lines, advances, end) = drain_file(&gz, &data, 0, 4096);
        assert!(matches!(end, End::Corrupt(_)), "{end:?}");
        assert!(
            lines.len() > 1000 && lines.len() < 20_000,
            "{}",
            lines.len()
        );
        assert_eq!(lines, numbered(0..lines.len()), "in order, none cut");
        assert_eq!(advances.last().unwrap().2, AdvanceKind::Done);
        // Shorter than the position: nothing to ship.
        let (lines, _, end) = drain_file(&gz, &data, data.len() as u64, 4096);
        assert!(matches!(end, End::Short(_) | End::Corrupt(_)), "{end:?}");
        assert!(lines.is_empty());
    }

    #[test]
    fn a_copy_deleted_or_replaced_before_it_is_read_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = cri(0..10);
        let gz = dir.path().join("0.log.20261207-100000.gz");
        gzip(&gz, &data);
        let m = std::fs::metadata(&gz).unwrap();
        let key = FileKey {
            dev: m.dev(),
            ino: m.ino(),
        };
        let other = dir.path().join("other.gz");
        gzip(&other, &data);
        std::fs::rename(&other, &gz).unwrap();
        assert!(matches!(open(&gz, key), Err(e) if e.kind() == io::ErrorKind::NotFound));
        std::fs::remove_file(&gz).unwrap();
        assert!(open(&gz, key).is_err());
    }
}
