//! The checks behind every fuzz target, one function per target, each taking the raw input.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, through `ringtail_fuzz::checks`)
//! and by the corpus replay test (`tests/fuzz_corpus.rs`, through `#[path]`), so a fuzzer's find
//! becomes a plain `cargo test` regression by copying its input into `fuzz/corpus/<target>/`.
//!
//! Plain Rust on ringtail + std + crates the root package already depends on (bumpalo, flate2,
//! prost, snap, serde, serde_json, tempfile), so that both crates can compile this one file.
//!
//! Input formats (so seeds can be written by hand):
//! - `cri`, `json_level`, `trace`, `positions`, `config`: the bytes as they are (CRI file
//!   content, one log line, one access-log line, a positions file, a YAML file).
//! - `tail`: 3 header bytes, then file content. Header: `split` (the first read gets
//!   `len * split / 255` bytes), `flags` (bit 0: first read filled the buffer, bit 1: second
//!   read did, bit 2: `logs.pods.json.line: msg`), `max` (`max_line_size = 8 * (max + 1)`).
//! - `gz`: 3 header bytes, then content. Header: `flags` (bit 0: gzip the content first, else
//!   it is the `.gz` file as it is; bit 1: plain format, else CRI), `cut` (the offset read
//!   from: that fraction of the content, moved back to its line's start), `buf` (the read
//!   buffer holds `16 + 4 * buf` bytes).
//! - `encode`: text records separated by `\n`: `c name=value,name=value` starts a chunk with
//!   that label set, `m key=value` adds a structured-metadata pair to the next entry
//!   (`*value` forces a span even for a constant), `e <ts_ns> <line>` adds an entry. Values
//!   and lines understand `\n`, `\t`, `\r`, `\\`. Other records are ignored.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bumpalo::Bump;
use prost::Message;
use ringtail::config::{Config, JsonLine};
use ringtail::entry::{
    AdvanceKind, Chunk, EntryRec, FileKey, Fingerprint, LabelSet, MetaKey, MetaVal,
};
use ringtail::positions::store::{self, FilePos, State};
use ringtail::process::json::{JsonFields, JsonScanner, LevelValue};
use ringtail::process::level;
use ringtail::process::trace::{TraceId, TraceScanner};
use ringtail::process::{Processor, Stream};
use ringtail::sink::encode::Encoder;
use ringtail::sink::proto::{
    EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp,
};
use ringtail::sources::files::cri::{self, Partials};
use ringtail::sources::files::recover::{self, End};
use ringtail::sources::files::tail::Tail;
use ringtail::timefmt;

/// A target's check: panics when the input shows a bug.
pub type Check = fn(&[u8]);

/// Every target: its name (= its corpus directory and its `[[bin]]`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("cri", cri),
    ("tail", tail),
    ("json_level", json_level),
    ("trace", trace),
    ("positions", positions),
    ("config", config),
    ("encode", encode),
    ("gz", gz),
];

// ---------------------------------------------------------------------------------------------
// cri

/// `cri::parse` on every line, and `Partials::feed` driven by the records, against a model of
/// the reassembly, for a few `max` values.
pub fn cri(data: &[u8]) {
    for max in [0, 5, 64, 16 << 10] {
        cri_with_max(data, max);
    }
}

/// A line being joined, as the model sees it.
struct ModelPending {
    start: u64,
    ts_ns: i64,
    /// The whole concatenation, uncut.
    joined: Vec<u8>,
}

fn cri_with_max(data: &[u8], max: usize) {
    let mut partials = Partials::default();
    let mut model: [Option<ModelPending>; 2] = [None, None];
    let mut at = 0u64;
    for raw in data.split_inclusive(|&b| b == b'\n') {
        let offset = at;
        at += raw.len() as u64;
        let Some(line) = raw.strip_suffix(b"\n") else {
            // An unterminated last line is never fed (the tailer reads it again once whole),
            // but it must parse without panicking.
            let _ = cri::parse(raw);
            break;
        };
        let Some(rec) = cri::parse(line) else {
            continue;
        };
        check_record(line, rec);
        let si = rec.stream.index();
        let got = partials
            .feed(rec, offset, max)
            .map(|j| (j.ts_ns, j.content.to_vec(), j.truncated));
        let mut joined = false;
        let want = match (model[si].take(), rec.partial) {
            (None, false) => Some((rec.ts_ns, rec.content.to_vec(), false)),
            (None, true) => {
                model[si] = Some(ModelPending {
                    start: offset,
                    ts_ns: rec.ts_ns,
                    joined: rec.content.to_vec(),
                });
                None
            }
            (Some(mut p), true) => {
                p.joined.extend_from_slice(rec.content);
                model[si] = Some(p);
                None
            }
            (Some(mut p), false) => {
                joined = true;
                p.joined.extend_from_slice(rec.content);
                let truncated = p.joined.len() > max;
                p.joined.truncate(max);
                Some((p.ts_ns, p.joined, truncated))
            }
        };
        assert_eq!(
            got, want,
            "feed of the record at offset {offset}, max {max}"
        );
        if let (true, Some((_, content, _))) = (joined, &got) {
            // Lines joined from `P` records are bounded by `max`. A lone `F` record is passed
            // through as it is: `process::limits::push_line` cuts it.
            assert!(content.len() <= max, "joined line longer than max {max}");
        }
        let earliest = model.iter().flatten().map(|p| p.start).min();
        assert_eq!(partials.earliest_start(), earliest, "after offset {offset}");
        if let Some(e) = partials.earliest_start() {
            assert!(
                e <= offset,
                "earliest_start {e} past an offset fed ({offset})"
            );
        }
    }
    partials.release_idle();
    let earliest = model.iter().flatten().map(|p| p.start).min();
    assert_eq!(
        partials.earliest_start(),
        earliest,
        "shrink lost a pending line"
    );
    partials.clear();
    assert_eq!(partials.earliest_start(), None);
}

/// A parsed record against the line it came from.
fn check_record(line: &[u8], rec: cri::Record<'_>) {
    let sp = line
        .iter()
        .position(|&b| b == b' ')
        .expect("a record has a space");
    assert_eq!(Some(rec.ts_ns), timefmt::parse_rfc3339_ns(&line[..sp]));
    let rest = &line[sp + 1..];
    let name = match rec.stream {
        Stream::Stdout => &b"stdout "[..],
        Stream::Stderr => b"stderr ",
    };
    assert!(rest.starts_with(name));
    let rest = &rest[name.len()..];
    let tags_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let first_tag = rest[..tags_end].split(|&b| b == b':').next().unwrap_or(&[]);
    assert_eq!(first_tag, if rec.partial { &b"P"[..] } else { b"F" });
    let content = rest.get(tags_end + 1..).unwrap_or(&[]);
    assert_eq!(rec.content, content);
    // The content borrows the end of the line.
    assert_eq!(
        rec.content.as_ptr() as usize + rec.content.len(),
        line.as_ptr() as usize + line.len()
    );
    check_timestamp_round_trip(rec.ts_ns);
}

/// What the stdout sink prints parses back to the same instant (years 0000 to 9999, the range
/// RFC 3339 can write).
fn check_timestamp_round_trip(ts_ns: i64) {
    let lo = timefmt::days_from_civil(0, 1, 1) as i128 * 86_400 * 1_000_000_000;
    let hi = timefmt::days_from_civil(10_000, 1, 1) as i128 * 86_400 * 1_000_000_000;
    if (lo..hi).contains(&(ts_ns as i128)) {
        let mut s = String::new();
        timefmt::format_rfc3339_ns(ts_ns, &mut s);
        assert_eq!(timefmt::parse_rfc3339_ns(s.as_bytes()), Some(ts_ns), "{s}");
    }
}

// ---------------------------------------------------------------------------------------------
// tail

/// `Tail::consume` on a header-selected split of the file into two reads.
pub fn tail(data: &[u8]) {
    let (hdr, body) = match data {
        [a, b, c, body @ ..] => ([*a, *b, *c], body),
        _ => ([128, 0, 127], data),
    };
    let split = body.len() * hdr[0] as usize / 255;
    let full = [hdr[1] & 1 != 0, hdr[1] & 2 != 0];
    let mode = if hdr[1] & 4 != 0 {
        JsonLine::Msg
    } else {
        JsonLine::Raw
    };
    let max = 8 * (hdr[2] as usize + 1);

    let labels = LabelSet::new([("namespace", "ns".to_string()), ("pod", "p".to_string())]);
    let path: Arc<Path> = Arc::from(Path::new("/var/log/pods/ns_p_u/c/0.log"));
    let key = FileKey { dev: 1, ino: 2 };
    // Bit 3 picks the plain format (RKE2 daemon logs) instead of CRI.
    let format = if hdr[1] & 8 != 0 {
        ringtail::sources::files::Format::Plain
    } else {
        ringtail::sources::files::Format::Cri
    };
    let mut t = Tail::new(
        key,
        path,
        labels.clone(),
        format,
        Fingerprint::default(),
        0,
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(body.len() as u64)),
    );
    let mut proc = Processor::new(mode, max);

    // A line longer than a read (a read that fills the buffer without a newline) is gathered
    // across reads up to `cap` bytes; once past it, what was kept is sent at once (cut, marked
    // truncated) and the rest of the line skipped; a shorter one is sent when its newline comes.
    // The position stays at a gathered line's start, and may stop inside a line that was sent
    // cut (the rest of it is skipped, not sent).
    let cap = max + 128;
    // Only CRI has partial records: an RKE2 line that looks like one is just a line.
    let is_cri = format == ringtail::sources::files::Format::Cri;
    let is_p = |line: &[u8]| is_cri && cri::parse(line).is_some_and(|r| r.partial);
    let mut cuts = Vec::new();
    // (start, kept bytes, sent) of the long line the tailer holds, by the model.
    let mut long: Option<(u64, Vec<u8>, bool)> = None;
    // A sent long line that is a `P` record and still unterminated: pending at its start.
    let mut open_p: Option<u64> = None;

    // First read.
    let first = &body[..split];
    let mut c1 = Chunk::new(labels.clone());
    t.consume(first, full[0], &mut proc, &mut c1);
    let r1 = t.read_offset;
    assert!(
        r1 as usize <= split,
        "read_offset {r1} past the bytes read ({split})"
    );
    check_tail_chunk(&c1, max);
    let mut want1 = expected_entries(first, is_cri);
    if overlong(first, full[0]) {
        let sent = first.len() > cap;
        if sent {
            let kept = &first[..cap];
            want1 += usize::from(!is_p(kept));
            if is_p(kept) {
                open_p = Some(0);
            } else {
                cuts.push(r1);
            }
        }
        long = Some((0, first[..first.len().min(cap)].to_vec(), sent));
    }
    assert_eq!(c1.entries.len(), want1, "entries of the first read");
    let a1 = file_advance(&c1);
    assert_eq!((a1.file, a1.kind, a1.from), (key, AdvanceKind::Continue, 0));
    assert!(a1.to <= r1, "advance to {} past read_offset {r1}", a1.to);
    check_restart_point(body, a1.to, &cuts);
    let fp1 = if split > 0 {
        Fingerprint::of(first)
    } else {
        Fingerprint::default()
    };
    assert_eq!(a1.fingerprint, fp1);
    proc.end_chunk();

    // Second read, from where the first one stopped, to the end.
    let second = &body[r1 as usize..];
    let mut c2 = Chunk::new(labels);
    t.consume(second, full[1], &mut proc, &mut c2);
    let r2 = t.read_offset;
    assert!(
        r1 <= r2 && r2 as usize <= body.len(),
        "read_offset {r1} -> {r2}"
    );
    check_tail_chunk(&c2, max);
    let mut want2 = 0;
    let mut rest = second;
    match (long.take(), second.iter().position(|&b| b == b'\n')) {
        // The long line's newline: sent now, whole or cut, unless it was sent already.
        (Some((_, kept, sent)), Some(nl)) => {
            if !sent {
                let joined = [&kept[..], &second[..nl]].concat();
                want2 += usize::from(!is_p(&joined[..joined.len().min(cap)]));
            }
            open_p = None;
            rest = &second[nl + 1..];
        }
        // Still no newline: gathered further (a read that filled the buffer), and sent, cut,
        // once past the cap.
        (Some((start, kept, sent)), None) => {
            if full[1] && !second.is_empty() && !sent {
                let room = cap - kept.len();
                let mut kept = kept;
                kept.extend_from_slice(&second[..second.len().min(room)]);
                if second.len() > room {
                    want2 += usize::from(!is_p(&kept));
                    if is_p(&kept) {
                        open_p = Some(start);
                    } else {
                        cuts.push(r2);
                    }
                    long = Some((start, Vec::new(), true));
                } else {
                    long = Some((start, kept, false));
                }
            } else {
                if sent && full[1] && !second.is_empty() {
                    // Skipped to the end of the read, inside the line sent cut.
                    cuts.push(r2);
                }
                long = Some((start, kept, sent));
            }
            rest = &second[second.len()..];
        }
        (None, _) => {}
    }
    want2 += expected_entries(rest, is_cri);
    if rest.len() == second.len() && overlong(second, full[1]) {
        let sent = second.len() > cap;
        if sent {
            let kept = &second[..cap];
            want2 += usize::from(!is_p(kept));
            if is_p(kept) {
                open_p = Some(r1);
            } else {
                cuts.push(r2);
            }
        }
        long = Some((r1, Vec::new(), sent));
    }
    assert_eq!(c2.entries.len(), want2, "entries of the second read");
    let a2 = file_advance(&c2);
    assert_eq!(a2.kind, AdvanceKind::Continue);
    assert_eq!(a2.from, a1.to, "advances must chain");
    assert!(a2.from <= a2.to, "advance goes backwards");
    assert!(a2.to <= r2, "advance to {} past read_offset {r2}", a2.to);
    check_restart_point(body, a2.to, &cuts);
    let fp2 = if r1 == 0 && second.len() > fp1.len as usize {
        Fingerprint::of(second)
    } else {
        fp1
    };
    assert_eq!(a2.fingerprint, fp2);
    // The position stops at the first pending `P` record or at a gathered (unsent) long line's
    // start, else at the read offset.
    let gathering = long
        .as_ref()
        .filter(|(_, _, sent)| !sent)
        .map(|(start, _, _)| *start);
    let pending = if is_cri {
        // A long line sent cut and still unterminated is a record too: an `F` one completes
        // the pending `P` lines of its stream (they are sent joined with what was kept).
        let sent_cut = long
            .as_ref()
            .filter(|(_, _, sent)| *sent)
            .map(|(start, _, _)| {
                let s = *start as usize;
                &body[s..(s + cap).min(body.len())]
            });
        partial_start(body, r2, sent_cut)
    } else {
        None
    };
    let safe = [pending, open_p, gathering]
        .into_iter()
        .flatten()
        .fold(r2, u64::min);
    assert_eq!(a2.to, safe.max(a2.from), "advance to");
    assert_eq!(t.nothing_to_advance(), a2.to == safe);
}

/// A read that filled the buffer without a newline: the start of a line longer than a read.
fn overlong(buf: &[u8], full: bool) -> bool {
    full && !buf.is_empty() && !buf.contains(&b'\n')
}

/// Entries one read should give on its own: every newline-terminated line that is not a `P`
/// record (an over-long read gives none yet: it is gathered).
fn expected_entries(buf: &[u8], is_cri: bool) -> usize {
    buf.split_inclusive(|&b| b == b'\n')
        .filter_map(|raw| raw.strip_suffix(b"\n"))
        .filter(|line| !(is_cri && cri::parse(line).is_some_and(|r| r.partial)))
        .count()
}

/// A committed position is where a restart may begin: a line start, or the end of a read
/// inside a line that was sent cut (the rest of it is skipped).
fn check_restart_point(body: &[u8], to: u64, cuts: &[u64]) {
    let line_start = to == 0 || body[to as usize - 1] == b'\n';
    assert!(
        line_start || cuts.contains(&to),
        "advance to {to} is inside a line"
    );
}

/// The offset of the first record of the earliest `P…` line still pending at `end`, by a
/// simple model of the tailer.
fn partial_start(body: &[u8], end: u64, sent_cut: Option<&[u8]>) -> Option<u64> {
    let mut pending: [Option<u64>; 2] = [None, None];
    let mut at = 0u64;
    for raw in body[..end as usize].split_inclusive(|&b| b == b'\n') {
        if let Some(line) = raw.strip_suffix(b"\n") {
            if let Some(r) = cri::parse(line) {
                let p = &mut pending[r.stream.index()];
                if r.partial {
                    p.get_or_insert(at);
                } else {
                    *p = None;
                }
            }
        }
        at += raw.len() as u64;
    }
    if let Some(r) = sent_cut.and_then(cri::parse) {
        if !r.partial {
            pending[r.stream.index()] = None;
        }
    }
    pending.iter().flatten().copied().min()
}

/// Every entry of a chunk the tailer built: valid UTF-8 within `max`, metadata as specified.
fn check_tail_chunk(c: &Chunk, max: usize) {
    for e in &c.entries {
        let line = span_bytes(c, e.line);
        assert!(std::str::from_utf8(line).is_ok(), "entry line is not UTF-8");
        assert!(line.len() <= max, "entry line {} > max {max}", line.len());
        assert!(e.meta_start <= e.meta_end && e.meta_end as usize <= c.meta.len());
        let mut seen = Vec::new();
        for (k, v) in c.meta_of(e) {
            assert!(!seen.contains(k), "metadata key {k:?} twice");
            seen.push(*k);
            let v = match v {
                MetaVal::Static(s) => s.as_bytes(),
                MetaVal::Span(s) => span_bytes(c, *s),
            };
            let v = std::str::from_utf8(v).expect("metadata value is not UTF-8");
            match k {
                MetaKey::Stream => assert!(v == "stdout" || v == "stderr", "stream {v:?}"),
                MetaKey::Truncated => assert_eq!(v, "true"),
                MetaKey::Level => {
                    assert!(!v.is_empty() && v.len() <= 16, "level {v:?}");
                    assert!(v.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()));
                }
                MetaKey::TraceId => check_trace_hex(v),
                MetaKey::Pid
                | MetaKey::SyslogIdentifier
                | MetaKey::Name
                | MetaKey::Reason
                | MetaKey::Node => {
                    panic!("a file line carries journal or Event metadata {k:?}")
                }
            }
        }
    }
}

/// The file advance `Tail::consume` sets on every chunk.
fn file_advance(c: &Chunk) -> ringtail::entry::FileAdvance {
    c.advance
        .as_ref()
        .and_then(|a| a.as_file())
        .cloned()
        .expect("consume sets a file advance")
}

fn span_bytes(c: &Chunk, s: ringtail::entry::Span) -> &[u8] {
    assert!(
        s.start <= s.end && s.end as usize <= c.data.len(),
        "span {s:?}"
    );
    &c.data[s.start as usize..s.end as usize]
}

// ---------------------------------------------------------------------------------------------
// json_level

/// `JsonScanner::scan` against serde_json, its reuse, and `level::normalize` against an oracle.
pub fn json_level(data: &[u8]) {
    let arena = Bump::new();
    let mut scanner = JsonScanner::default();
    let first = scanner.scan(&arena, data).map(owned_fields);
    // A reused scanner gives the same answer after another line.
    let other = scanner.scan(&arena, br#"{"a":[1,{"b":[]}],"level":"info","msg":"x"}"#);
    assert!(other.is_some());
    let again = scanner.scan(&arena, data).map(owned_fields);
    assert_eq!(first, again, "a reused scanner answers differently");

    if let Some(want) = json_oracle(data) {
        assert_eq!(first, want, "simd-json and serde_json disagree");
    }

    check_level(data);
    if let Some(f) = &first {
        match &f.level {
            Some(OwnedLevel::Text(t)) => check_level(t.as_bytes()),
            Some(OwnedLevel::Number(n)) => {
                let _ = level::from_number(*n);
            }
            None => {}
        }
        if let Some(id) = f
            .trace_id
            .as_deref()
            .and_then(|t| TraceId::parse(t.as_bytes()))
        {
            check_trace_hex(id.as_str());
        }
    }
}

#[derive(Debug)]
enum OwnedLevel {
    Text(String),
    Number(f64),
}

/// Numbers compare to within two units in the last place, and must name the same level.
/// simd-json's number parsing is not correctly rounded for integers too big for u64 or for
/// mantissas of more than 19 digits, so it and serde_json may differ in the last bit; that
/// changes nothing ringtail ships, which is the level a number names (only 10..60 do). Found
/// by fuzzing: corpus `json_level/huge_integer_level` and `json_level/long_mantissa_level`.
impl PartialEq for OwnedLevel {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (OwnedLevel::Text(a), OwnedLevel::Text(b)) => a == b,
            (OwnedLevel::Number(a), OwnedLevel::Number(b)) => {
                let close = a == b || (a - b).abs() <= a.abs().max(b.abs()) * 2.0 * f64::EPSILON;
                close && level::from_number(*a) == level::from_number(*b)
            }
            _ => false,
        }
    }
}

#[derive(Debug, PartialEq)]
struct OwnedFields {
    level: Option<OwnedLevel>,
    msg: Option<String>,
    trace_id: Option<String>,
}

fn owned_fields(f: JsonFields<'_>) -> OwnedFields {
    OwnedFields {
        level: f.level.map(|l| match l {
            LevelValue::Text(t) => OwnedLevel::Text(t.to_string()),
            LevelValue::Number(n) => OwnedLevel::Number(n),
        }),
        msg: f.msg.map(str::to_string),
        trace_id: f.trace_id.map(str::to_string),
    }
}

/// The top-level members of an object in order, duplicates kept.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(kv);
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// What `scan` should find, by serde_json: `None` when serde_json cannot tell (it rejects the
/// input; simd-json is then free to differ), `Some(None)` for valid JSON that is not an object.
fn json_oracle(data: &[u8]) -> Option<Option<OwnedFields>> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    if !value.is_object() {
        return Some(None);
    }
    let Members(members) = serde_json::from_slice(data).ok()?;
    let mut f = OwnedFields {
        level: None,
        msg: None,
        trace_id: None,
    };
    // Later members win; values of the wrong type are ignored, as `top_level_fields` does.
    for (k, v) in members {
        match (k.as_str(), v) {
            ("level", serde_json::Value::String(s)) => f.level = Some(OwnedLevel::Text(s)),
            ("level", serde_json::Value::Number(n)) => {
                if let Some(x) = n.as_f64() {
                    f.level = Some(OwnedLevel::Number(x));
                }
            }
            ("msg", serde_json::Value::String(s)) => f.msg = Some(s),
            ("trace_id" | "traceId" | "traceID", serde_json::Value::String(s)) => {
                f.trace_id = Some(s)
            }
            _ => {}
        }
    }
    Some(Some(f))
}

/// `level::normalize` against its specification.
fn check_level(raw: &[u8]) {
    let mut buf = level::LevelBuf::default();
    let got = level::normalize(raw, &mut buf).map(str::to_string);
    let t = raw.trim_ascii();
    let want = if t.is_empty() || t.len() > buf.len() || !t.is_ascii() {
        None
    } else {
        let lower = String::from_utf8(t.to_ascii_lowercase()).expect("ASCII");
        Some(match lower.as_str() {
            "warn" | "warning" => "warn".to_string(),
            "err" | "error" => "error".to_string(),
            "fatal" | "crit" | "critical" => "critical".to_string(),
            _ => lower,
        })
    };
    assert_eq!(got, want, "normalize({:?})", String::from_utf8_lossy(raw));
}

// ---------------------------------------------------------------------------------------------
// trace

/// `TraceScanner::find`: what it returns is a trace ID that is in the line, after its header.
pub fn trace(data: &[u8]) {
    let scanner = TraceScanner::default();
    let found = scanner.find(data);
    if let Some(id) = found {
        let h = id.as_str();
        check_trace_hex(h);
        let lower = data.to_ascii_lowercase();
        let b3 = format!("x-b3-traceid:[{h}]");
        let in_b3 = contains(&lower, b3.as_bytes());
        let in_w3c = h.len() == 32
            && find_all(&lower, b"traceparent:[")
                .any(|p| lower.get(p + 16..p + 48) == Some(h.as_bytes()));
        assert!(
            in_b3 || in_w3c,
            "{h} is not after a trace header in the line"
        );
    }
    // A prefix without `:[` changes nothing; a valid header before the line wins.
    let mut prefixed = b"[2024-11-25T10:00:00Z] map[User-Agent ".to_vec();
    prefixed.extend_from_slice(data);
    assert_eq!(
        scanner.find(&prefixed),
        found,
        "a neutral prefix changed the result"
    );
    let mut led = b"X-B3-Traceid:[80F198EE56343BA8] ".to_vec();
    led.extend_from_slice(data);
    assert_eq!(
        scanner
            .find(&led)
            .map(|t| t.as_str().to_string())
            .as_deref(),
        Some("80f198ee56343ba8")
    );
    if let Some(id) = TraceId::parse(data) {
        check_trace_hex(id.as_str());
        assert!(id
            .as_str()
            .eq_ignore_ascii_case(std::str::from_utf8(data).unwrap()));
    }
}

/// 16 or 32 lower-case hex digits, not all zero.
fn check_trace_hex(h: &str) {
    assert!(h.len() == 16 || h.len() == 32, "trace id {h:?}: length");
    assert!(
        h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "trace id {h:?}: not lower-case hex"
    );
    assert!(h.bytes().any(|b| b != b'0'), "trace id {h:?}: all zeros");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find_all(hay, needle).next().is_some()
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

// ---------------------------------------------------------------------------------------------
// positions

/// `store::load` on the bytes as `positions.json` (alone), and as `positions.json.tmp` beside
/// a good main file.
pub fn positions(data: &[u8]) {
    let parsed = serde_json::from_slice::<State>(data).ok();
    let want = |state: &State| match state {
        State::Empty => (Vec::new(), None),
        State::V1 {
            saved_at, files, ..
        } => (files.clone(), Some(*saved_at)),
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let main = dir.path().join(store::FILE_NAME);
    fs::write(&main, data).expect("write positions.json");
    let l = store::load(dir.path()).expect("load fails on a readable file");
    match &parsed {
        Some(state) => {
            assert_eq!((l.files, l.saved_at), want(state));
            assert!(l.set_aside.is_none(), "a good file was set aside");
            assert_eq!(fs::read(&main).expect("main file kept"), data);
        }
        None => {
            assert!(
                l.files.is_empty() && l.saved_at.is_none(),
                "corrupt file loaded"
            );
            let aside = l.set_aside.expect("a corrupt file is set aside");
            assert_eq!(aside.parent(), Some(dir.path()));
            assert_eq!(fs::read(&aside).expect("set-aside file"), data);
            assert!(!main.exists(), "the corrupt file is still in place");
            let l = store::load(dir.path()).expect("load after setting aside");
            assert!(l.files.is_empty() && l.set_aside.is_none());
        }
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let good = vec![FilePos {
        path: PathBuf::from("/var/log/pods/ns_p_u/c/0.log"),
        dev: 2049,
        ino: 7,
        fp_len: 1024,
        fp_hash: 0xdead_beef,
        offset: 42,
    }];
    let main_state = State::V1 {
        saved_at: 1_732_528_800,
        files: good.clone(),
        journal_cursor: None,
    };
    let main_bytes = serde_json::to_vec(&main_state).expect("serialize");
    fs::write(dir.path().join(store::FILE_NAME), main_bytes).expect("write positions.json");
    let tmp = dir.path().join(format!("{}.tmp", store::FILE_NAME));
    fs::write(&tmp, data).expect("write the temp file");
    let l = store::load(dir.path()).expect("load with a temp file");
    assert!(l.set_aside.is_none(), "the main file was set aside");
    match &parsed {
        Some(state) => assert_eq!((l.files, l.saved_at), want(state), "temp file must win"),
        None => assert_eq!(l.files, good, "a torn temp file must be ignored"),
    }
}

// ---------------------------------------------------------------------------------------------
// config

/// `Config::from_yaml` on any UTF-8: no panic; errors name the file; what `check-config`
/// prints parses back to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match Config::from_yaml(text, "fuzz.yaml") {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(
                e.0.starts_with("fuzz.yaml"),
                "error does not name the file: {e}"
            );
            return;
        }
    };
    let yaml = cfg.to_yaml();
    let again = Config::from_yaml(&yaml, "effective.yaml")
        .unwrap_or_else(|e| panic!("the effective config does not parse: {e}\n{yaml}"));
    assert_eq!(
        again, cfg,
        "the effective config reads back differently\n{yaml}"
    );
}

// ---------------------------------------------------------------------------------------------
// encode

/// Chunks built from the input, encoded by `Encoder`, decoded by prost, compared with what was
/// put in; the bytes also equal prost's own encoding of the expected request.
pub fn encode(data: &[u8]) {
    let chunks = build_chunks(data);
    for c in &chunks {
        for l in &c.labels {
            check_rendered(l);
        }
    }
    let want = expected_request(&chunks);

    let mut enc = Encoder::default();
    let mut out = Vec::new();
    enc.encode(&chunks, &mut out);
    let got = PushRequest::decode(out.as_slice()).expect("the encoder wrote invalid protobuf");
    assert_eq!(got, want, "decoded request differs from the chunks");
    assert_eq!(
        out,
        want.encode_to_vec(),
        "bytes differ from prost's encoding"
    );

    // Reuse: another batch in between changes nothing.
    let mut other = Vec::new();
    enc.encode(&chunks[chunks.len() / 2..], &mut other);
    let mut again = Vec::new();
    enc.encode(&chunks, &mut again);
    assert_eq!(out, again, "a reused encoder wrote different bytes");

    // What the writer sends: snappy's raw format.
    let compressed = snap::raw::Encoder::new()
        .compress_vec(&out)
        .expect("snappy compress");
    let back = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .expect("snappy decompress");
    assert_eq!(back, out);
}

const LABEL_NAMES: &[&str] = &[
    "namespace",
    "pod",
    "container",
    "node",
    "app",
    "app_name",
    "job",
    "service_name",
    "filename",
];

const STATIC_VALUES: &[&str] = &[
    "stdout", "stderr", "true", "trace", "debug", "info", "notice", "warn", "error", "critical",
];

fn fnv(b: &[u8]) -> u64 {
    Fingerprint::of(b).hash ^ b.len() as u64
}

fn unescape(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut it = b.iter();
    while let Some(&c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(&o) => out.push(o),
            None => out.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_once(b: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match b.iter().position(|&x| x == sep) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

fn build_chunks(data: &[u8]) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut meta: Vec<(MetaKey, String, bool)> = Vec::new();
    for rec in data.split(|&b| b == b'\n') {
        let Some((&op, rest)) = rec.split_first() else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        match op {
            b'c' => {
                let mut pairs: Vec<(&'static str, String)> = Vec::new();
                for pair in rest.split(|&b| b == b',').filter(|p| !p.is_empty()) {
                    let (name, value) = split_once(pair, b'=');
                    let name = LABEL_NAMES
                        .iter()
                        .find(|n| n.as_bytes() == name)
                        .copied()
                        .unwrap_or(LABEL_NAMES[fnv(name) as usize % LABEL_NAMES.len()]);
                    if pairs.iter().all(|(n, _)| *n != name) {
                        pairs.push((name, unescape(value)));
                    }
                }
                chunks.push(Chunk::new(LabelSet::new(pairs)));
            }
            b'm' => {
                let (key, value) = split_once(rest, b'=');
                let key = match key {
                    b"stream" => MetaKey::Stream,
                    b"level" => MetaKey::Level,
                    b"trace_id" => MetaKey::TraceId,
                    b"truncated" => MetaKey::Truncated,
                    other => [
                        MetaKey::Stream,
                        MetaKey::Level,
                        MetaKey::TraceId,
                        MetaKey::Truncated,
                    ][fnv(other) as usize % 4],
                };
                let (forced, value) = match value.strip_prefix(b"*") {
                    Some(v) => (true, v),
                    None => (false, value),
                };
                meta.push((key, unescape(value), forced));
            }
            b'e' => {
                if chunks.is_empty() {
                    chunks.push(Chunk::new(LabelSet::new([(
                        "namespace",
                        "default".to_string(),
                    )])));
                }
                let c = chunks.last_mut().expect("a chunk");
                let (ts, line) = split_once(rest, b' ');
                let ts_ns = std::str::from_utf8(ts)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or_else(|| fnv(ts) as i64);
                let meta_start = c.meta.len() as u32;
                for (k, v, forced) in meta.drain(..) {
                    let val = match STATIC_VALUES.iter().find(|s| **s == v) {
                        Some(s) if !forced => MetaVal::Static(s),
                        _ => MetaVal::Span(c.push_valid(&v)),
                    };
                    c.meta.push((k, val));
                }
                let line = c.push_valid(&unescape(line));
                c.entries.push(EntryRec {
                    labels: 0,
                    ts_ns,
                    line,
                    meta_start,
                    meta_end: c.meta.len() as u32,
                });
            }
            _ => {}
        }
    }
    chunks
}

/// The request the chunks stand for: one stream per label set, in order of first appearance,
/// entries in order.
fn expected_request(chunks: &[Chunk]) -> PushRequest {
    let mut streams: Vec<StreamAdapter> = Vec::new();
    let mut index: HashMap<Vec<(&'static str, String)>, usize> = HashMap::new();
    for c in chunks.iter() {
        for e in &c.entries {
            let set = c.labels_of(e);
            let si = *index.entry(set.pairs().to_vec()).or_insert_with(|| {
                streams.push(StreamAdapter {
                    labels: set.rendered().to_string(),
                    entries: Vec::new(),
                    hash: 0,
                });
                streams.len() - 1
            });
            let (seconds, nanos) = (
                e.ts_ns.div_euclid(1_000_000_000),
                e.ts_ns.rem_euclid(1_000_000_000),
            );
            assert_eq!(
                seconds as i128 * 1_000_000_000 + nanos as i128,
                e.ts_ns as i128
            );
            streams[si].entries.push(EntryAdapter {
                timestamp: Some(Timestamp {
                    seconds,
                    nanos: nanos as i32,
                }),
                line: c.str(e.line).to_string(),
                structured_metadata: c
                    .meta_of(e)
                    .iter()
                    .map(|(k, v)| LabelPairAdapter {
                        name: k.as_str().to_string(),
                        value: c.meta_str(v).to_string(),
                    })
                    .collect(),
            });
        }
    }
    PushRequest { streams }
}

/// `LabelSet::rendered` parses back (Prometheus text form) to its pairs.
fn check_rendered(l: &LabelSet) {
    let r = l.rendered();
    let inner = r
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_else(|| panic!("labels {r:?} are not in braces"));
    let mut parsed: Vec<(String, String)> = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        if !parsed.is_empty() {
            assert_eq!(
                (chars.next(), chars.next()),
                (Some(','), Some(' ')),
                "{r:?}"
            );
        }
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{r:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?} in {r:?}"),
                },
                Some(c) => value.push(c),
                None => panic!("unterminated value in {r:?}"),
            }
        }
        parsed.push((name, value));
    }
    let want: Vec<(String, String)> = l
        .pairs()
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    assert_eq!(parsed, want, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// gz

/// `recover::read_from`, which ships a rotated file that kubelet compressed while ringtail was
/// down, from the position on. Any bytes: no panic, and the advances chain from the offset.
/// Content it gzipped itself: the whole of it is read (the last advance reaches its end), and a
/// small buffer, which cuts lines across reads and keeps the rest at its front, ships the same
/// lines with the same metadata as one read of the whole.
pub fn gz(data: &[u8]) {
    let (hdr, body) = match data {
        [a, b, c, body @ ..] => ([*a, *b, *c], body),
        _ => ([1, 128, 0], data),
    };
    let format = if hdr[0] & 2 != 0 {
        ringtail::sources::files::Format::Plain
    } else {
        ringtail::sources::files::Format::Cri
    };
    let small = 16 + 4 * hdr[2] as usize;
    if hdr[0] & 1 == 0 {
        let (_, advances, _) = read_gz(body, u64::from(hdr[1]), small, format);
        assert_chained(&advances, u64::from(hdr[1]));
        return;
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, body).expect("gzip in memory");
    let gzipped = e.finish().expect("gzip in memory");
    let at = body.len() * hdr[1] as usize / 255;
    let offset = body[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1) as u64;
    let (lines, advances, end) = read_gz(&gzipped, offset, small, format);
    assert!(matches!(end, End::Complete), "{end:?}");
    assert_chained(&advances, offset);
    let last = advances.last().map_or(offset, |a| a.1);
    assert_eq!(last, body.len() as u64, "read to the end");
    let (whole, _, _) = read_gz(&gzipped, offset, body.len() + 1, format);
    assert_eq!(
        lines, whole,
        "a {small}-byte buffer ships what one read of it all does"
    );
}

/// Each advance starts where the one before ended, the first at `offset`.
fn assert_chained(advances: &[(u64, u64)], offset: u64) {
    let mut at = offset;
    for &(from, to) in advances {
        assert_eq!(from, at, "{advances:?}");
        assert!(to >= from, "{advances:?}");
        at = to;
    }
}

/// A line shipped, with its structured metadata.
type Shipped = (String, Vec<(String, String)>);

/// Lines with their metadata, and the advances, of `recover::read_from` on `gz` from `offset`
/// through a `buf`-byte buffer.
fn read_gz(
    gz: &[u8],
    offset: u64,
    buf: usize,
    format: ringtail::sources::files::Format,
) -> (Vec<Shipped>, Vec<(u64, u64)>, End) {
    let labels = LabelSet::new([("pod", "p".to_string())]);
    let mut t = Tail::new(
        FileKey { dev: 1, ino: 2 },
        Arc::from(Path::new("/var/log/pods/ns_p_u/c/0.log.20261207-100000.gz")),
        labels,
        format,
        Fingerprint::default(),
        offset,
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let mut proc = Processor::new(JsonLine::Raw, 1 << 20);
    // Room for every chunk: nothing drains the ring while this runs.
    let (tx, rx) = ringtail::ring::ring(gz.len() * 8 + 64);
    let stop = ringtail::shutdown::Stop::default();
    let mut b = vec![0u8; buf];
    let src = flate2::read::MultiGzDecoder::new(gz);
    let end = recover::read_from(src, &mut t, &mut b, &mut proc, &tx, &stop).expect("not stopping");
    let (mut lines, mut advances) = (Vec::new(), Vec::new());
    while let Ok(c) = rx.recv_timeout(std::time::Duration::ZERO) {
        let c: Chunk = c;
        for e in &c.entries {
            let meta = c
                .meta_of(e)
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), c.meta_str(v).to_string()))
                .collect();
            lines.push((c.str(e.line).to_string(), meta));
        }
        if let Some(a) = c.advance.as_ref().and_then(|a| a.as_file()) {
            assert_eq!(a.kind, AdvanceKind::Continue);
            advances.push((a.from, a.to));
        }
    }
    (lines, advances, end)
}
