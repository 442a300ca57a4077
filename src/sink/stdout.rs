//! The stdout sink: one JSON object per entry, for trying ringtail without Loki and for `jq`
//! (contract §3): `{"labels":{...},"ts":"<RFC3339Nano UTC>","line":"...","metadata":{...}}`.

use std::io::Write;

use crate::entry::{Chunk, EntryRec, LabelSet};
use crate::telemetry::tap::Filter;
use crate::timefmt::format_rfc3339_ns;

/// Writes the entries of `chunks` that `filter` accepts (all without one) to `out`, and flushes.
pub fn write_chunks(
    chunks: &[Chunk],
    filter: Option<&Filter>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut line = String::with_capacity(512);
    let mut labels: Vec<Option<String>> = Vec::new();
    for chunk in chunks {
        labels.clear();
        labels.extend(chunk.labels.iter().map(|set| {
            filter
                .is_none_or(|f| f.accepts(set))
                .then(|| labels_json(set))
        }));
        for e in &chunk.entries {
            let Some(l) = &labels[usize::from(e.labels).min(labels.len() - 1)] else {
                continue;
            };
            line.clear();
            entry_json(chunk, e, l, &mut line);
            out.write_all(line.as_bytes())?;
        }
    }
    out.flush()
}

/// A label set as a JSON object.
pub fn labels_json(set: &LabelSet) -> String {
    let mut text = String::from("{");
    for (i, (k, v)) in set.pairs().iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        push_json_str(&mut text, k);
        text.push(':');
        push_json_str(&mut text, v);
    }
    text.push('}');
    text
}

/// One entry as the contract's JSON line (with its newline), its labels already rendered by
/// [`labels_json`].
pub fn entry_json(chunk: &Chunk, e: &EntryRec, labels: &str, line: &mut String) {
    line.push_str("{\"labels\":");
    line.push_str(labels);
    line.push_str(",\"ts\":\"");
    format_rfc3339_ns(e.ts_ns, line);
    line.push_str("\",\"line\":");
    push_json_str(line, chunk.str(e.line));
    line.push_str(",\"metadata\":{");
    for (i, (k, v)) in chunk.meta_of(e).iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_json_str(line, k.as_str());
        line.push(':');
        push_json_str(line, chunk.meta_str(v));
    }
    line.push_str("}}\n");
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping, without building a Value.
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{EntryRec, LabelSet, MetaKey, MetaVal};

    #[test]
    fn writes_the_contract_json() {
        let mut c = Chunk::new(LabelSet::new([
            ("namespace", "ns".to_string()),
            ("app", String::new()),
            ("pod", "p\"1".to_string()),
        ]));
        let line = c.push_valid("hello \"x\"\n");
        c.meta.push((MetaKey::Stream, MetaVal::Static("stdout")));
        c.entries.push(EntryRec {
            labels: 0,
            ts_ns: 1_732_528_800_123_400_000,
            line,
            meta_start: 0,
            meta_end: 1,
        });
        let line = c.push_valid("two");
        c.entries.push(EntryRec {
            labels: 0,
            ts_ns: 0,
            line,
            meta_start: 1,
            meta_end: 1,
        });
        let mut out = Vec::new();
        write_chunks(&[c], None, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"labels":{"namespace":"ns","pod":"p\"1"},"ts":"2024-11-25T10:00:00.1234Z","line":"hello \"x\"\n","metadata":{"stream":"stdout"}}"#,
                "\n",
                r#"{"labels":{"namespace":"ns","pod":"p\"1"},"ts":"1970-01-01T00:00:00Z","line":"two","metadata":{}}"#,
                "\n"
            )
        );
    }
}
