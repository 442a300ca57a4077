//! The level and timestamp of a plain log line, as the RKE2 daemons write them: klog headers
//! (kubelet: `I1125 10:00:00.123456    1234 file.go:42] msg`) and logrus fields (containerd:
//! `time="2024-11-25T10:00:00.123456789Z" level=info msg="…"`).
//!
//! klog's header has no year and no zone. It is the node's local time: read in the node's zone
//! ([`node_zone`], from `/etc/localtime` mounted from the host, or `logs.rke2.timezone`), with
//! daylight saving's gaps and folds resolved as `date` does (a time in a gap moves forward, one
//! in a fold is the earlier). The year is the one that puts the line closest to the time it is
//! read (a December line read in January is last year's). A time more than [`MAX_AHEAD_NS`]
//! after the read is not trusted (a wrong zone): the line then gets no timestamp of its own,
//! rather than one Loki would reject as too new.

use std::path::Path;
use std::sync::{LazyLock, OnceLock};

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use memchr::memmem::Finder;

use crate::timefmt::{days_from_civil, digits, parse_rfc3339_ns};

/// Searchers for the logrus keys, built once (this runs per line).
static TIME_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"time="));
static LEVEL_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"level="));

/// How far past the time of reading a line's own klog time may be (clock skew).
const MAX_AHEAD_NS: i64 = 5 * 60 * 1_000_000_000;

/// Where the node's zone is when `logs.rke2.timezone` is empty (the DaemonSet mounts the host's).
pub const LOCALTIME: &str = "/etc/localtime";

static NODE_ZONE: OnceLock<TimeZone> = OnceLock::new();

/// Sets the zone klog times are read in, once, at start (UTC until then).
pub fn set_node_zone(tz: TimeZone) {
    let _ = NODE_ZONE.set(tz);
}

fn node_zone() -> &'static TimeZone {
    NODE_ZONE.get_or_init(|| TimeZone::UTC)
}

/// The zone `logs.rke2.timezone` names: empty for the node's (the TZif file at `localtime`,
/// UTC where there is none), an absolute path to a TZif file, or a tz database name such as
/// `Europe/Berlin` (the system's zoneinfo, else the copy built in).
pub fn resolve_zone(setting: &str, localtime: &Path) -> Result<TimeZone, String> {
    let tzif = |path: &Path| -> Result<TimeZone, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TimeZone::tzif(&path.to_string_lossy(), &bytes)
            .map_err(|e| format!("{} is not a TZif zone file: {e}", path.display()))
    };
    let setting = setting.trim();
    if setting.is_empty() {
        if !localtime.exists() {
            return Ok(TimeZone::UTC);
        }
        return tzif(localtime).map_err(|e| {
            format!(
                "empty, so the node's zone is read from {}, but {e}. Mount the host's \
                 /etc/localtime there, or set a zone (for example UTC or Europe/Berlin)",
                localtime.display()
            )
        });
    }
    if setting.starts_with('/') {
        return tzif(Path::new(setting));
    }
    TimeZone::get(setting).map_err(|e| {
        format!(
            "{setting:?} is not a time zone ({e}); use a tz database name such as UTC or \
             Europe/Berlin, a TZif file's absolute path, or leave it empty for the node's \
             /etc/localtime"
        )
    })
}

/// What a plain line says about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header<'a> {
    /// Raw level text (logrus) or the klog severity's keyword.
    pub level: Option<&'a [u8]>,
    pub ts_ns: Option<i64>,
}

/// Reads a klog header (in the node's zone), else logrus `time=`/`level=` fields. `read_ns`
/// supplies klog's year.
pub fn header(line: &[u8], read_ns: i64) -> Header<'_> {
    header_in(line, read_ns, node_zone())
}

fn header_in<'a>(line: &'a [u8], read_ns: i64, tz: &TimeZone) -> Header<'a> {
    if let Some(h) = klog(line, read_ns, tz) {
        return h;
    }
    logrus(line)
}

fn klog(line: &[u8], read_ns: i64, tz: &TimeZone) -> Option<Header<'static>> {
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
    let utc = *tz == TimeZone::UTC;
    let at = |year: i64| -> Option<i64> {
        if utc {
            let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
            return Some(secs * 1_000_000_000 + micros * 1000);
        }
        // A leap second (:60) is the next minute's first, as for UTC.
        let dt = DateTime::new(
            i16::try_from(year).ok()?,
            month as i8,
            day as i8,
            h as i8,
            m as i8,
            s.min(59) as i8,
            (micros * 1000) as i32,
        )
        .ok()?;
        let ts = tz.to_ambiguous_timestamp(dt).compatible().ok()?;
        let ns = i64::try_from(ts.as_nanosecond()).ok()?;
        Some(ns + i64::from(s == 60) * 1_000_000_000)
    };
    // The estimate of the year can be off by one at a year boundary (and the zone moves New
    // Year by hours): pick the year that puts the line closest to the time it was read.
    let ts = [year_now + 1, year_now, year_now - 1]
        .into_iter()
        .filter_map(at)
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

    fn zone(name: &str) -> TimeZone {
        resolve_zone(name, Path::new("/nonexistent")).unwrap()
    }

    #[test]
    fn klog_times_are_read_in_the_nodes_zone() {
        // Berlin is UTC+1 in November, UTC+2 in July: 11:00 local is 10:00 or 09:00 UTC.
        let berlin = zone("Europe/Berlin");
        let line = b"I1125 11:00:00.250000 1 x.go:1] m";
        let h = header_in(line, ns("2026-11-25T10:00:05Z"), &berlin);
        assert_eq!(h.ts_ns, Some(ns("2026-11-25T10:00:00.25Z")));
        let h = header_in(
            b"I0701 11:00:00.000000 1 x.go:1] m",
            ns("2026-07-01T09:01:00Z"),
            &berlin,
        );
        assert_eq!(h.ts_ns, Some(ns("2026-07-01T09:00:00Z")));
        // West of UTC: New York's 05:00 is 10:00 UTC in November.
        let ny = zone("America/New_York");
        let h = header_in(
            b"W1125 05:00:00.000000 1 x.go:1] m",
            ns("2026-11-25T10:00:01Z"),
            &ny,
        );
        assert_eq!(h.ts_ns, Some(ns("2026-11-25T10:00:00Z")));
        // The same line read as UTC would be ahead of the read and is not trusted.
        let h = header_in(line, ns("2026-11-25T10:00:05Z"), &TimeZone::UTC);
        assert_eq!(h.ts_ns, None);
    }

    #[test]
    fn new_year_in_a_zone_east_of_utc() {
        // Tokyo (UTC+9): the last second of 2026 there is 14:59:59 UTC on Dec 31, read after
        // Tokyo's New Year but while UTC is still in 2026, and just after UTC's.
        let tokyo = zone("Asia/Tokyo");
        let line = b"I1231 23:59:59.000000 1 x.go:1] m";
        for read in ["2026-12-31T15:00:30Z", "2027-01-01T00:00:30Z"] {
            let h = header_in(line, ns(read), &tokyo);
            assert_eq!(h.ts_ns, Some(ns("2026-12-31T14:59:59Z")), "read at {read}");
        }
        // Tokyo's first second of 2027, read while UTC is still in 2026.
        let h = header_in(
            b"I0101 00:00:01.000000 1 x.go:1] m",
            ns("2026-12-31T15:00:30Z"),
            &tokyo,
        );
        assert_eq!(h.ts_ns, Some(ns("2026-12-31T15:00:01Z")));
    }

    #[test]
    fn daylight_saving_gaps_move_forward_and_folds_take_the_earlier() {
        let berlin = zone("Europe/Berlin");
        // 2026-03-29 02:30 does not exist in Berlin (02:00 -> 03:00): read as 03:30 CEST.
        let h = header_in(
            b"I0329 02:30:00.000000 1 x.go:1] m",
            ns("2026-03-29T01:31:00Z"),
            &berlin,
        );
        assert_eq!(h.ts_ns, Some(ns("2026-03-29T01:30:00Z")));
        // 2026-10-25 02:30 happens twice: the first (CEST, UTC+2).
        let h = header_in(
            b"I1025 02:30:00.000000 1 x.go:1] m",
            ns("2026-10-25T00:31:00Z"),
            &berlin,
        );
        assert_eq!(h.ts_ns, Some(ns("2026-10-25T00:30:00Z")));
    }

    #[test]
    fn zone_settings_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        // Empty: the node's TZif file, UTC without one.
        let localtime = dir.path().join("localtime");
        assert_eq!(resolve_zone("", &localtime).unwrap(), TimeZone::UTC);
        let tokyo = std::fs::read("/usr/share/zoneinfo/Asia/Tokyo");
        if let Ok(bytes) = &tokyo {
            std::fs::write(&localtime, bytes).unwrap();
            let tz = resolve_zone("", &localtime).unwrap();
            let h = header_in(
                b"I1125 19:00:00.000000 1 x.go:1] m",
                ns("2026-11-25T10:00:01Z"),
                &tz,
            );
            assert_eq!(h.ts_ns, Some(ns("2026-11-25T10:00:00Z")));
            let by_path = resolve_zone(&localtime.to_string_lossy(), Path::new("/x")).unwrap();
            let h = header_in(
                b"I1125 19:00:00.000000 1 x.go:1] m",
                ns("2026-11-25T10:00:01Z"),
                &by_path,
            );
            assert_eq!(h.ts_ns, Some(ns("2026-11-25T10:00:00Z")));
        }
        assert_eq!(zone("UTC"), TimeZone::UTC);
        let e = resolve_zone("Mars/Olympus", &localtime).unwrap_err();
        assert!(
            e.contains("Mars/Olympus") && e.contains("Europe/Berlin"),
            "{e}"
        );
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a zone").unwrap();
        let e = resolve_zone(&junk.to_string_lossy(), &localtime).unwrap_err();
        assert!(e.contains("junk") && e.contains("TZif"), "{e}");
        let e = resolve_zone("", &junk).unwrap_err();
        assert!(e.contains("/etc/localtime") && e.contains("junk"), "{e}");
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
