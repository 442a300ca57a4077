//! Encodes a batch of chunks as a Loki `PushRequest`, straight into one reused buffer.
//!
//! Why not build `proto::PushRequest` and call prost's `encode`: that would allocate a `String`
//! per line and per metadata value for structs thrown away right after. This writes the same
//! bytes (pinned by a test against prost's own encoding) with prost's wire helpers, in two
//! passes: entry sizes first (length prefixes need them), then the bytes.

use std::collections::HashMap;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use crate::entry::{Chunk, EntryRec};

/// One stream of a request: where its label set is, and its entries in order.
struct StreamRefs {
    /// (chunk, label index) of its label set.
    labels: (usize, usize),
    /// (chunk, entry) pairs.
    entries: Vec<(u32, u32)>,
}

/// Reused state for encoding; one per writer.
#[derive(Default)]
pub struct Encoder {
    /// Streams in order of first appearance.
    streams: Vec<StreamRefs>,
    by_labels: HashMap<String, usize>,
    /// For the chunk being grouped: its label indexes' streams.
    stream_of: Vec<usize>,
    entry_lens: Vec<u64>,
}

fn len_delimited(tag: u32, len: u64) -> u64 {
    key_len(tag) as u64 + encoded_len_varint(len) as u64 + len
}

fn string_field(tag: u32, s: &[u8]) -> u64 {
    if s.is_empty() {
        0
    } else {
        len_delimited(tag, s.len() as u64)
    }
}

fn put_string(tag: u32, s: &[u8], out: &mut Vec<u8>) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s);
    }
}

fn timestamp_len(ts_ns: i64) -> u64 {
    let (secs, nanos) = split_ts(ts_ns);
    let mut n = 0;
    if secs != 0 {
        n += 1 + encoded_len_varint(secs as u64) as u64;
    }
    if nanos != 0 {
        n += 1 + encoded_len_varint(nanos as u64) as u64;
    }
    n
}

fn split_ts(ts_ns: i64) -> (i64, i32) {
    (
        ts_ns.div_euclid(1_000_000_000),
        ts_ns.rem_euclid(1_000_000_000) as i32,
    )
}

fn pair_len(name: &[u8], value: &[u8]) -> u64 {
    string_field(1, name) + string_field(2, value)
}

fn entry_len(chunk: &Chunk, e: &EntryRec) -> u64 {
    let mut n = len_delimited(1, timestamp_len(e.ts_ns));
    n += string_field(2, chunk.bytes(e.line));
    for (k, v) in chunk.meta_of(e) {
        n += len_delimited(3, pair_len(k.as_str().as_bytes(), chunk.meta_bytes(v)));
    }
    n
}

impl Encoder {
    /// Writes the `PushRequest` for `chunks` into `out` (cleared first). Entries of one label
    /// set form one stream, in the order they were read.
    pub fn encode(&mut self, chunks: &[Chunk], out: &mut Vec<u8>) {
        out.clear();
        self.streams.clear();
        self.by_labels.clear();
        self.entry_lens.clear();
        for (ci, chunk) in chunks.iter().enumerate() {
            if chunk.entries.is_empty() {
                continue;
            }
            // Streams are numbered in the order their first entry appears.
            self.stream_of.clear();
            self.stream_of.resize(chunk.labels.len(), usize::MAX);
            for (ei, e) in chunk.entries.iter().enumerate() {
                let li = usize::from(e.labels).min(chunk.labels.len() - 1);
                if self.stream_of[li] == usize::MAX {
                    let text = chunk.labels[li].rendered();
                    self.stream_of[li] = match self.by_labels.get(text) {
                        Some(&si) => si,
                        None => {
                            self.by_labels.insert(text.to_string(), self.streams.len());
                            self.streams.push(StreamRefs {
                                labels: (ci, li),
                                entries: Vec::new(),
                            });
                            self.streams.len() - 1
                        }
                    };
                }
                self.streams[self.stream_of[li]]
                    .entries
                    .push((ci as u32, ei as u32));
            }
        }
        for stream in &self.streams {
            let refs = &stream.entries;
            let (ci, li) = stream.labels;
            let labels = chunks[ci].labels[li].rendered().as_bytes();
            let mut stream_len = string_field(1, labels);
            for &(ci, ei) in refs {
                let chunk = &chunks[ci as usize];
                let len = entry_len(chunk, &chunk.entries[ei as usize]);
                self.entry_lens.push(len);
                stream_len += len_delimited(2, len);
            }
            encode_key(1, WireType::LengthDelimited, out);
            encode_varint(stream_len, out);
            put_string(1, labels, out);
            let lens = &self.entry_lens[self.entry_lens.len() - refs.len()..];
            for (&(ci, ei), &len) in refs.iter().zip(lens) {
                let chunk = &chunks[ci as usize];
                let e = &chunk.entries[ei as usize];
                encode_key(2, WireType::LengthDelimited, out);
                encode_varint(len, out);
                let (secs, nanos) = split_ts(e.ts_ns);
                encode_key(1, WireType::LengthDelimited, out);
                encode_varint(timestamp_len(e.ts_ns), out);
                if secs != 0 {
                    encode_key(1, WireType::Varint, out);
                    encode_varint(secs as u64, out);
                }
                if nanos != 0 {
                    encode_key(2, WireType::Varint, out);
                    encode_varint(nanos as u64, out);
                }
                put_string(2, chunk.bytes(e.line), out);
                for (k, v) in chunk.meta_of(e) {
                    let (name, value) = (k.as_str().as_bytes(), chunk.meta_bytes(v));
                    encode_key(3, WireType::LengthDelimited, out);
                    encode_varint(pair_len(name, value), out);
                    put_string(1, name, out);
                    put_string(2, value, out);
                }
            }
        }
    }
}

/// One half of a push that a size limit refused (413): its snappy body and its entry count.
pub struct Half {
    pub body: Vec<u8>,
    pub entries: u64,
}

/// Cuts a sealed push (snappy `PushRequest`) in two at its middle entry, streams and entries in
/// their order: the first half holds the earlier entries of every stream it shares with the
/// second, so sending the halves in turn keeps per-stream order. Rare (a proxy's body limit
/// below `loki.batch.max_bytes`), so it decodes with prost rather than keeping the chunks of
/// every batch in flight. Err when the body holds fewer than two entries (nothing to cut) or
/// does not decode, which cannot happen for a body ringtail sealed.
pub fn split_in_two(body: &[u8]) -> Result<[Half; 2], String> {
    use prost::Message;

    use super::proto::PushRequest;
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let req = PushRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    let total: usize = req.streams.iter().map(|s| s.entries.len()).sum();
    if total < 2 {
        return Err(format!("{total} entries"));
    }
    let mut first = PushRequest::default();
    let mut second = PushRequest::default();
    let mut left = total / 2;
    for mut stream in req.streams {
        if left >= stream.entries.len() {
            left -= stream.entries.len();
            first.streams.push(stream);
        } else if left == 0 {
            second.streams.push(stream);
        } else {
            let rest = stream.entries.split_off(left);
            left = 0;
            let mut tail = stream.clone();
            tail.entries = rest;
            first.streams.push(stream);
            second.streams.push(tail);
        }
    }
    let half = |r: PushRequest| {
        let entries = r.streams.iter().map(|s| s.entries.len() as u64).sum();
        snap::raw::Encoder::new()
            .compress_vec(&r.encode_to_vec())
            .map(|body| Half { body, entries })
            .map_err(|e| format!("snappy: {e}"))
    };
    Ok([half(first)?, half(second)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{LabelSet, MetaKey, MetaVal};
    use crate::sink::proto::{
        EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp,
    };
    use prost::Message;

    type Line<'a> = (i64, &'a str, &'a [(MetaKey, &'a str)]);

    fn chunk(labels: &str, lines: &[Line]) -> Chunk {
        let mut c = Chunk::new(LabelSet::new([("pod", labels.to_string())]));
        for (ts, line, meta) in lines {
            let meta_start = c.meta.len() as u32;
            for (k, v) in *meta {
                let span = c.push_valid(v);
                c.meta.push((*k, MetaVal::Span(span)));
            }
            let line = c.push_valid(line);
            c.entries.push(EntryRec {
                labels: 0,
                ts_ns: *ts,
                line,
                meta_start,
                meta_end: c.meta.len() as u32,
            });
        }
        c
    }

    #[test]
    fn a_split_keeps_every_entry_once_and_each_streams_order() {
        let lines: Vec<(i64, String)> = (0..7).map(|i| (i, format!("a{i}"))).collect();
        let a: Vec<Line> = lines
            .iter()
            .map(|(t, l)| (*t, l.as_str(), &[][..]))
            .collect();
        let chunks = vec![
            chunk("a", &a[..5]),
            chunk("b", &[(9, "b0", &[])]),
            chunk("a", &a[5..]),
        ];
        let mut raw = Vec::new();
        Encoder::default().encode(&chunks, &mut raw);
        let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let [x, y] = split_in_two(&body).unwrap();
        assert_eq!((x.entries, y.entries), (4, 4));
        let decode = |h: &Half| {
            let raw = snap::raw::Decoder::new().decompress_vec(&h.body).unwrap();
            PushRequest::decode(raw.as_slice())
                .unwrap()
                .streams
                .into_iter()
                .flat_map(|s| {
                    s.entries
                        .into_iter()
                        .map(move |e| (s.labels.clone(), e.line))
                })
                .collect::<Vec<_>>()
        };
        let mut got = decode(&x);
        got.extend(decode(&y));
        let want: Vec<(String, String)> = (0..7)
            .map(|i| ("{pod=\"a\"}".to_string(), format!("a{i}")))
            .chain([("{pod=\"b\"}".to_string(), "b0".to_string())])
            .collect();
        assert_eq!(got, want);
        // One entry cannot be cut; junk is an error, not a panic.
        let one = snap::raw::Encoder::new()
            .compress_vec(&{
                let mut r = Vec::new();
                Encoder::default().encode(&[chunk("a", &a[..1])], &mut r);
                r
            })
            .unwrap();
        assert!(split_in_two(&one).is_err());
        assert!(split_in_two(b"not snappy").is_err());
    }

    #[test]
    fn bytes_equal_prosts_encoding_of_the_same_request() {
        let chunks = vec![
            chunk(
                "a",
                &[(
                    1_732_528_800_123_456_789,
                    "first",
                    &[(MetaKey::Stream, "stdout")],
                )],
            ),
            chunk("b", &[(0, "", &[]), (-1_500_000_000, "neg", &[])]),
            chunk(
                "a",
                &[(
                    5,
                    "third é",
                    &[(MetaKey::Level, "warn"), (MetaKey::TraceId, "ab")],
                )],
            ),
            chunk("c", &[]),
        ];
        let mut out = Vec::new();
        Encoder::default().encode(&chunks, &mut out);

        let entry = |s: i64, n: i32, line: &str, meta: &[(&str, &str)]| EntryAdapter {
            timestamp: Some(Timestamp {
                seconds: s,
                nanos: n,
            }),
            line: line.into(),
            structured_metadata: meta
                .iter()
                .map(|(k, v)| LabelPairAdapter {
                    name: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        };
        let want = PushRequest {
            streams: vec![
                StreamAdapter {
                    labels: r#"{pod="a"}"#.into(),
                    entries: vec![
                        entry(1_732_528_800, 123_456_789, "first", &[("stream", "stdout")]),
                        entry(0, 5, "third é", &[("level", "warn"), ("trace_id", "ab")]),
                    ],
                    hash: 0,
                },
                StreamAdapter {
                    labels: r#"{pod="b"}"#.into(),
                    entries: vec![entry(0, 0, "", &[]), entry(-2, 500_000_000, "neg", &[])],
                    hash: 0,
                },
            ],
        };
        assert_eq!(out, want.encode_to_vec());
        assert_eq!(PushRequest::decode(&out[..]).unwrap(), want);
    }

    #[test]
    fn entries_of_one_chunk_with_several_label_sets_form_several_streams() {
        let mut c = chunk("a", &[(1, "one", &[]), (2, "two", &[]), (3, "three", &[])]);
        let b = LabelSet::new([("pod", "b".to_string())]);
        let bi = c.label_index(&b);
        assert_eq!(c.label_index(&b), bi, "interned");
        c.entries[1].labels = bi;
        let mut out = Vec::new();
        Encoder::default().encode(&[c], &mut out);
        let got = PushRequest::decode(&out[..]).unwrap();
        let streams: Vec<(String, Vec<String>)> = got
            .streams
            .into_iter()
            .map(|s| (s.labels, s.entries.into_iter().map(|e| e.line).collect()))
            .collect();
        assert_eq!(
            streams,
            vec![
                (
                    r#"{pod="a"}"#.to_string(),
                    vec!["one".to_string(), "three".to_string()]
                ),
                (r#"{pod="b"}"#.to_string(), vec!["two".to_string()]),
            ]
        );
    }

    #[test]
    fn reuse_gives_the_same_bytes() {
        let chunks = vec![chunk("x", &[(9, "l", &[])])];
        let mut enc = Encoder::default();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        enc.encode(&chunks, &mut a);
        enc.encode(&chunks, &mut b);
        assert_eq!(a, b);
    }
}
