//! Loki's per-line limits, applied as the line is copied into its chunk: invalid UTF-8 is
//! repaired with U+FFFD (Loki rejects a whole batch for one bad string), and a line over
//! `max_line_size` is cut on a character boundary (Loki would reject it with 400
//! `line_too_long`).

use crate::entry::Span;

/// What happened to one line on its way into the chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub span: Span,
    pub truncated: bool,
    pub repaired: bool,
}

/// Appends `line` to `data` as valid UTF-8 of at most `max` bytes.
pub fn push_line(data: &mut Vec<u8>, line: &[u8], max: usize) -> Written {
    let start = data.len();
    let (truncated, repaired) = match std::str::from_utf8(line) {
        Ok(s) => {
            let cut = floor_char_boundary(s, max);
            data.extend_from_slice(&s.as_bytes()[..cut]);
            (cut < s.len(), false)
        }
        Err(_) => {
            let mut truncated = false;
            'outer: for chunk in line.utf8_chunks() {
                for piece in [chunk.valid(), ""] {
                    let room = max - (data.len() - start);
                    if piece.len() > room {
                        let cut = floor_char_boundary(piece, room);
                        data.extend_from_slice(&piece.as_bytes()[..cut]);
                        truncated = true;
                        break 'outer;
                    }
                    data.extend_from_slice(piece.as_bytes());
                }
                if !chunk.invalid().is_empty() {
                    if max - (data.len() - start) < 3 {
                        truncated = true;
                        break;
                    }
                    data.extend_from_slice("\u{FFFD}".as_bytes());
                }
            }
            (truncated, true)
        }
    };
    Written {
        span: Span {
            start: start as u32,
            end: data.len() as u32,
        },
        truncated,
        repaired,
    }
}

/// The largest `n <= max` at which `s` can be cut.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut n = max;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &[u8], max: usize) -> (String, bool, bool) {
        let mut data = b"prefix".to_vec();
        let w = push_line(&mut data, line, max);
        let s = String::from_utf8(data[w.span.start as usize..w.span.end as usize].to_vec())
            .expect("always valid UTF-8");
        (s, w.truncated, w.repaired)
    }

    #[test]
    fn valid_lines_pass_unchanged() {
        assert_eq!(run(b"hello", 10), ("hello".into(), false, false));
        assert_eq!(run(b"", 10), ("".into(), false, false));
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        assert_eq!(run(b"hello world", 5), ("hello".into(), true, false));
        // "é" is two bytes: cutting at 2 would split it.
        assert_eq!(run("aé".as_bytes(), 2), ("a".into(), true, false));
    }

    #[test]
    fn invalid_utf8_is_repaired() {
        assert_eq!(
            run(b"a\xffb\xc3", 100),
            ("a\u{FFFD}b\u{FFFD}".into(), false, true)
        );
        assert_eq!(run(b"ab\xff\xffcd", 4), ("ab".into(), true, true));
    }

    #[test]
    fn matches_a_naive_oracle() {
        // Oracle: lossy conversion, then cut at the last boundary <= max.
        let samples: &[&[u8]] = &[
            b"plain",
            b"\xe2\x82\xac euro",
            b"x\xf0\x9f\x98y",
            b"\x00\x01\xfe",
        ];
        for s in samples {
            for max in 0..20 {
                let lossy = String::from_utf8_lossy(s).into_owned();
                let cut = floor_char_boundary(&lossy, max);
                let (got, truncated, _) = run(s, max);
                assert_eq!(got, &lossy[..cut], "{s:?} max {max}");
                assert_eq!(truncated, cut < lossy.len());
            }
        }
    }
}
