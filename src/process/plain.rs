//! The level and timestamp of a plain log line, as the RKE2 daemons write them: klog headers
//! (kubelet: `I1125 10:00:00.123456    1234 file.go:42] msg`) and logrus fields (containerd:
//! `time="2024-11-25T10:00:00.123456789Z" level=info msg="…"`).
//!
//! klog's header has no year: the year that puts the line closest to the time it is read is
//! taken (a December line read in January is last year's). klog writes the node's local time;
//! RKE2 nodes run in UTC, which is assumed, and a time more than [`MAX_AHEAD_NS`] after the read
//! is not trusted (a node east of UTC): the line then gets no timestamp of its own, rather than
//! one Loki would reject as too new.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::timefmt::{days_from_civil, digits, parse_rfc3339_ns};

/// Searchers for the logrus keys, built once (this runs per line).
static TIME_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"time="));
static LEVEL_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"level="));

/// How far past the time of reading a line's own klog time may be (clock skew).
const MAX_AHEAD_NS: i64 = 5 * 60 * 1_000_000_000;

/// What a plain line says about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header<'a> {
    /// Raw level text (logrus) or the klog severity's keyword.
    pub level: Option<&'a [u8]>,
    pub ts_ns: Option<i64>,
}

/// Reads a klog header, else logrus `time=`/`level=` fields. `read_ns` supplies klog's year.
pub fn header(line: &[u8], read_ns: i64) -> Header<'_> {
    if let Some(h) = klog(line, read_ns) {
        return h;
    }
    logrus(line)
}

fn klog(line: &[u8], read_ns: i64) -> Option<Header<'static>> {
    // Lmmdd hh:mm:ss.uuuuuu
    if line.len() < 21 || line[5] != b' ' || line[8] != b':' || line[11] != b':' || line[14] != b'.'
    {
        return None;
    }
    let level: &'static [u8] = match line[0] {
        b'I' => b"info",
        b'W' => b"warn",
        b'E' => b"error",
        b'F' => b"critical",
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| digits(&line[r]);
    let (month, day) = (num(1..3)?, num(3..5)?);
    let (h, m, s, micros) = (num(6..8)?, num(9..11)?, num(12..14)?, num(15..21)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let year_now = 1970 + read_ns.div_euclid(1_000_000_000 * 86_400 * 36_525 / 100);
    let at = |year: i64| {
        let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
        secs * 1_000_000_000 + micros * 1000
    };
    // The estimate of the year can be off by one at a year boundary; pick the year that puts
    // the line closest to the time it was read.
    let ts = [year_now + 1, year_now, year_now - 1]
        .into_iter()
        .map(at)
        .min_by_key(|&t| (t - read_ns).unsigned_abs())?;
    Some(Header {
        level: Some(level),
        ts_ns: (ts <= read_ns + MAX_AHEAD_NS).then_some(ts),
    })
}

fn logrus(line: &[u8]) -> Header<'_> {
    let mut h = Header::default();
    if let Some(v) = field(line, &TIME_KEY) {
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        h.ts_ns = parse_rfc3339_ns(v);
    }
    if let Some(v) = field(line, &LEVEL_KEY) {
        h.level = Some(
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v),
        );
    }
    h
}

/// The value of `key` (which ends with `=`) at the start of the line or after a space: up to
/// the next space, or the closing quote of a quoted value.
fn field<'a>(line: &'a [u8], key: &Finder<'static>) -> Option<&'a [u8]> {
    let key_len = key.needle().len();
    let mut from = 0;
    while let Some(i) = key.find(&line[from..]) {
        let at = from + i;
        if at == 0 || line[at - 1] == b' ' {
            let v = &line[at + key_len..];
            let end = if v.first() == Some(&b'"') {
                memchr::memchr(b'"', &v[1..]).map_or(v.len(), |e| e + 2)
            } else {
                memchr::memchr(b' ', v).unwrap_or(v.len())
            };
            return Some(&v[..end]);
        }
        from = at + key_len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::parse_rfc3339_ns;

    fn ns(s: &str) -> i64 {
        parse_rfc3339_ns(s.as_bytes()).unwrap()
    }

    #[test]
    fn klog_headers_take_the_year_of_reading() {
        let read = ns("2026-11-25T10:00:05Z");
        let h = header(
            b"I1125 10:00:00.123456    1234 kubelet.go:42] Started kubelet",
            read,
        );
        assert_eq!(h.level, Some(&b"info"[..]));
        assert_eq!(h.ts_ns, Some(ns("2026-11-25T10:00:00.123456Z")));
        for (line, level) in [("W", "warn"), ("E", "error"), ("F", "critical")] {
            let l = format!("{line}1125 09:59:59.000001 1 x.go:1] m");
            assert_eq!(header(l.as_bytes(), read).level, Some(level.as_bytes()));
        }
    }

    #[test]
    fn a_december_line_read_in_january_is_last_year() {
        let read = ns("2027-01-01T00:00:10Z");
        let h = header(b"E1231 23:59:59.500000 1 x.go:1] late", read);
        assert_eq!(h.ts_ns, Some(ns("2026-12-31T23:59:59.5Z")));
    }

    #[test]
    fn a_klog_time_ahead_of_the_read_is_not_trusted() {
        // A node at UTC+2 writes 12:00 at 10:00 UTC.
        let read = ns("2026-11-25T10:00:00Z");
        let h = header(b"I1125 12:00:00.000000 1 x.go:1] local time", read);
        assert_eq!((h.level, h.ts_ns), (Some(&b"info"[..]), None));
    }

    #[test]
    fn logrus_fields() {
        let h = header(
            br#"time="2026-11-25T10:00:00.123456789Z" level=warning msg="failed to x" error="y z""#,
            0,
        );
        assert_eq!(h.level, Some(&b"warning"[..]));
        assert_eq!(h.ts_ns, Some(ns("2026-11-25T10:00:00.123456789Z")));
        let h = header(br#"msg="level=fake" time="bad" level="error""#, 0);
        assert_eq!((h.level, h.ts_ns), (Some(&b"error"[..]), None));
    }

    #[test]
    fn other_lines_say_nothing() {
        for l in [
            &b""[..],
            b"plain text",
            b"I1125",
            b"X1125 10:00:00.123456 1 x] m",
            b"I1399 10:00:00.123456 1 x] m",
        ] {
            assert_eq!(
                header(l, ns("2026-11-25T10:00:00Z")),
                Header::default(),
                "{:?}",
                String::from_utf8_lossy(l)
            );
        }
    }
}
