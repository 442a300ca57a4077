//! Trace IDs in Istio access-log lines: W3C `Traceparent:[00-<32 hex>-<16 hex>-<2 hex>]` and B3
//! `X-B3-Traceid:[<16 or 32 hex>]`, header names in any letter case (contract §1).
//!
//! Both headers print as `Name:[value]` (Go's map formatting), so the scan looks only for `:[`
//! with a searcher built once, and checks the name just before it. Lines without `:[` cost one
//! memchr pass.

use memchr::memmem;

/// A trace ID, lower-case hex, 16 or 32 characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId {
    buf: [u8; 32],
    len: u8,
}

impl TraceId {
    /// Accepts 16 or 32 hex digits that are not all zero (an all-zero ID is "no trace").
    /// One pass: check, lower-case and look for a non-zero digit together.
    pub fn parse(hex: &[u8]) -> Option<TraceId> {
        if !(hex.len() == 16 || hex.len() == 32) {
            return None;
        }
        let mut buf = [0u8; 32];
        let mut nonzero = false;
        for (out, &b) in buf.iter_mut().zip(hex) {
            let lower = b | 0x20;
            if !(b.is_ascii_digit() || (b'a'..=b'f').contains(&lower)) {
                return None;
            }
            *out = if b.is_ascii_digit() { b } else { lower };
            nonzero |= b != b'0';
        }
        nonzero.then_some(TraceId {
            buf,
            len: hex.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

/// Finds trace IDs; build once per thread and reuse.
pub struct TraceScanner {
    open: memmem::Finder<'static>,
}

impl Default for TraceScanner {
    fn default() -> Self {
        TraceScanner {
            open: memmem::Finder::new(b":["),
        }
    }
}

impl TraceScanner {
    /// The first W3C or B3 trace ID in `line`.
    pub fn find(&self, line: &[u8]) -> Option<TraceId> {
        for at in self.open.find_iter(line) {
            let value = &line[at + 2..];
            if ends_with_ignore_case(&line[..at], b"traceparent") {
                if let Some(id) = parse_traceparent(value) {
                    return Some(id);
                }
            } else if ends_with_ignore_case(&line[..at], b"x-b3-traceid") {
                let end = memchr::memchr(b']', value)?;
                if let Some(id) = TraceId::parse(&value[..end]) {
                    return Some(id);
                }
            }
        }
        None
    }
}

fn ends_with_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay[hay.len() - needle.len()..].eq_ignore_ascii_case(needle)
}

/// `<version>-<trace id>-<parent id>-<flags>]`; version `ff` is invalid by the W3C spec.
fn parse_traceparent(v: &[u8]) -> Option<TraceId> {
    if v.len() < 55 + 1 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || v[55] != b']' {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    if v[0..2].eq_ignore_ascii_case(b"ff") || !hex(&v[0..2]) || !hex(&v[36..52]) || !hex(&v[53..55])
    {
        return None;
    }
    // The trace ID itself is checked by `TraceId::parse`.
    TraceId::parse(&v[3..35])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(s: &str) -> Option<String> {
        TraceScanner::default()
            .find(s.as_bytes())
            .map(|t| t.as_str().to_string())
    }

    #[test]
    fn w3c_traceparent_in_any_case() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let line = format!(
            "[2024-11-25T10:00:00Z] \"GET /x HTTP/1.1\" 200 map[Traceparent:[00-{id}-00f067aa0ba902b7-01] User-Agent:[curl]]"
        );
        assert_eq!(find(&line).as_deref(), Some(id));
        let upper = line
            .replace("Traceparent", "TRACEPARENT")
            .replace(id, &id.to_uppercase());
        assert_eq!(find(&upper).as_deref(), Some(id));
    }

    #[test]
    fn b3_trace_ids_of_both_lengths() {
        assert_eq!(
            find("map[X-B3-Traceid:[80f198ee56343ba864fe8b2a57d3eff7]]").as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        assert_eq!(
            find("x-b3-traceid:[E457B5A2E4D86BD1]").as_deref(),
            Some("e457b5a2e4d86bd1")
        );
    }

    #[test]
    fn rejects_malformed_and_zero_ids() {
        assert_eq!(
            find("Traceparent:[00-00000000000000000000000000000000-00f067aa0ba902b7-01]"),
            None
        );
        assert_eq!(
            find("Traceparent:[00-4bf92f3577b34da6-00f067aa0ba902b7-01]"),
            None
        );
        assert_eq!(
            find("Traceparent:[ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01]"),
            None
        );
        assert_eq!(find("X-B3-Traceid:[xyz]"), None);
        assert_eq!(find("X-B3-Traceid:[0000000000000000]"), None);
        assert_eq!(find("X-B3-Traceid:[e457b5a2e4d86bd1"), None);
        assert_eq!(find("no headers here"), None);
        assert_eq!(find("Foo:[bar] Traceparent:["), None);
    }

    #[test]
    fn skips_a_bad_header_and_finds_a_later_good_one() {
        assert_eq!(
            find("Traceparent:[garbage] X-B3-Traceid:[e457b5a2e4d86bd1]").as_deref(),
            Some("e457b5a2e4d86bd1")
        );
    }
}
