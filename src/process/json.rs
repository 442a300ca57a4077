//! The top-level fields of a JSON log line that ringtail reads: `level`, `msg`, and the trace
//! fields `trace_id` / `traceId` / `traceID`.
//!
//! Parsing is simd-json's tape: the line is copied once into the caller's `bumpalo` arena (the
//! parser unescapes in place, and the arena is reset per chunk, so this allocates nothing per
//! line), and the tape's allocation is reused across lines and chunks.

use bumpalo::Bump;
use memchr::memmem;
use simd_json::{Node, StaticNode, Tape};

/// A level as written: text, or a bunyan/pino number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LevelValue<'a> {
    Text(&'a str),
    Number(f64),
}

/// The fields found; strings are unescaped and borrow from the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JsonFields<'a> {
    pub level: Option<LevelValue<'a>>,
    pub msg: Option<&'a str>,
    pub trace_id: Option<&'a str>,
}

/// Reusable parser state; one per tailer thread.
pub struct JsonScanner {
    /// Finds `"trace`, the start of every trace key, for [`JsonScanner::quick_level`].
    trace_key: memmem::Finder<'static>,
    buffers: simd_json::Buffers,
    /// Kept empty between calls; `Tape::reset` moves it to the lifetime of each input.
    tape: Option<Tape<'static>>,
}

impl Default for JsonScanner {
    fn default() -> Self {
        JsonScanner {
            trace_key: memmem::Finder::new(b"\"trace"),
            buffers: simd_json::Buffers::new(4096),
            tape: Some(Tape::null().reset()),
        }
    }
}

impl JsonScanner {
    /// The level of a zap- or logrus-style line, `{"level":"<value>",…}`, read without a full
    /// parse, when nothing else in the line needs one: no `"trace` key anywhere. `None` means
    /// "use [`JsonScanner::scan`]". Unlike `scan`, it does not validate the rest of the line: a
    /// line that starts like JSON and breaks later still gets its level.
    pub fn quick_level<'a>(&self, line: &'a [u8]) -> Option<&'a [u8]> {
        const PREFIX: &[u8] = b"{\"level\":\"";
        let rest = line.strip_prefix(PREFIX)?;
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' || !matches!(rest.get(end + 1), Some(b',' | b'}')) {
            return None;
        }
        if line.trim_ascii_end().last() != Some(&b'}') || self.trace_key.find(line).is_some() {
            return None;
        }
        Some(&rest[..end])
    }

    /// Parses `line` if it is a JSON object; `None` when it is not valid JSON or not an object.
    pub fn scan<'a>(&mut self, arena: &'a Bump, line: &[u8]) -> Option<JsonFields<'a>> {
        let padded = arena.alloc_slice_fill_copy(line.len() + simd_json::INPUT_PADDING, 0u8);
        padded[..line.len()].copy_from_slice(line);
        let mut tape: Tape<'a> = self.tape.take().unwrap_or_else(Tape::null).reset();
        let parsed = simd_json::fill_tape_padded(padded, line.len(), &mut self.buffers, &mut tape);
        let fields = match parsed {
            Ok(()) => top_level_fields(&tape.0),
            Err(_) => None,
        };
        self.tape = Some(tape.reset());
        fields
    }
}

fn top_level_fields<'a>(nodes: &[Node<'a>]) -> Option<JsonFields<'a>> {
    let Some(Node::Object { len, .. }) = nodes.first() else {
        return None;
    };
    let mut fields = JsonFields::default();
    let mut i = 1;
    for _ in 0..*len {
        let key = match nodes.get(i)? {
            Node::String(k) => *k,
            _ => return None,
        };
        let value = nodes.get(i + 1)?;
        match (key, value) {
            ("level", Node::String(s)) => fields.level = Some(LevelValue::Text(s)),
            ("level", Node::Static(n)) => {
                if let Some(f) = static_number(n) {
                    fields.level = Some(LevelValue::Number(f));
                }
            }
            ("msg", Node::String(s)) => fields.msg = Some(s),
            ("trace_id" | "traceId" | "traceID", Node::String(s)) => fields.trace_id = Some(s),
            _ => {}
        }
        // Skip the key and the whole value subtree.
        i += 1 + match value {
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        };
    }
    Some(fields)
}

fn static_number(n: &StaticNode) -> Option<f64> {
    match *n {
        StaticNode::I64(v) => Some(v as f64),
        StaticNode::U64(v) => Some(v as f64),
        StaticNode::F64(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(line: &str) -> Option<(Option<String>, Option<String>, Option<String>)> {
        let arena = Bump::new();
        let mut s = JsonScanner::default();
        s.scan(&arena, line.as_bytes()).map(|f| {
            (
                f.level.map(|l| match l {
                    LevelValue::Text(t) => t.to_string(),
                    LevelValue::Number(n) => n.to_string(),
                }),
                f.msg.map(str::to_string),
                f.trace_id.map(str::to_string),
            )
        })
    }

    #[test]
    fn reads_zap_style_lines() {
        let got = scan(
            r#"{"level":"info","ts":1732528800.1,"caller":"x.go:1","msg":"hello \"you\"","trace_id":"abc"}"#,
        );
        assert_eq!(
            got,
            Some((
                Some("info".into()),
                Some("hello \"you\"".into()),
                Some("abc".into())
            ))
        );
    }

    #[test]
    fn skips_nested_values_to_find_later_keys() {
        let got = scan(
            r#"{"a":{"level":"nested","b":[1,{"msg":"x"}]},"c":[],"level":"WARN","msg":"top"}"#,
        );
        assert_eq!(got, Some((Some("WARN".into()), Some("top".into()), None)));
    }

    #[test]
    fn numeric_levels_and_other_trace_keys() {
        assert_eq!(
            scan(r#"{"level":30,"traceId":"t1"}"#),
            Some((Some("30".into()), None, Some("t1".into())))
        );
        assert_eq!(
            scan(r#"{"traceID":"t2","level":null}"#),
            Some((None, None, Some("t2".into())))
        );
    }

    #[test]
    fn quick_level_agrees_with_the_full_parse_where_it_answers() {
        let s = JsonScanner::default();
        let arena = Bump::new();
        let mut full = JsonScanner::default();
        for line in [
            r#"{"level":"info","ts":1.5,"msg":"a"}"#,
            r#"{"level":"WARN"}"#,
            r#"{"level":"error","msg":"x","trace_id":"abc"}"#,
            r#"{"level":"in\"fo","msg":"x"}"#,
            r#"{"lvl":"info"}"#,
            r#"{"level":"info""#,
            r#"{"level":30,"msg":"x"}"#,
            r#"{"msg":"x","level":"debug"}"#,
        ] {
            let quick = s.quick_level(line.as_bytes());
            if let Some(q) = quick {
                let f = full.scan(&arena, line.as_bytes()).expect("valid JSON");
                assert_eq!(
                    f.level,
                    Some(LevelValue::Text(std::str::from_utf8(q).unwrap())),
                    "{line}"
                );
            }
            let expect_quick = matches!(
                line,
                r#"{"level":"info","ts":1.5,"msg":"a"}"# | r#"{"level":"WARN"}"#
            );
            assert_eq!(quick.is_some(), expect_quick, "{line}");
        }
    }

    #[test]
    fn integers_beyond_u64_do_not_hide_the_level() {
        // Found by the fuzzer: simd-json rejected the whole line for one huge number.
        let got = scan(r#"{"level":"error","n":184467440737095516150,"trace_id":"t"}"#);
        assert_eq!(got, Some((Some("error".into()), None, Some("t".into()))));
    }

    #[test]
    fn non_objects_and_bad_json_give_none() {
        assert_eq!(scan("[1,2]"), None);
        assert_eq!(scan(r#"{"level":"info""#), None);
        assert_eq!(scan("{not json}"), None);
        assert_eq!(scan(""), None);
    }

    #[test]
    fn reuses_state_across_many_lines() {
        let arena = Bump::new();
        let mut s = JsonScanner::default();
        for i in 0..1000 {
            let line = format!(r#"{{"level":"debug","msg":"m{i}"}}"#);
            let f = s.scan(&arena, line.as_bytes()).expect("valid");
            assert_eq!(f.msg, Some(format!("m{i}").as_str()));
        }
    }
}
