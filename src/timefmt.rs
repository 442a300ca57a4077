//! RFC 3339 timestamps: parse CRI's variable-length RFC3339Nano, and format the stdout sink's.
//!
//! Why by hand: this runs once per line, and containerd writes
//! `2024-11-25T10:00:00.123456789Z` or `...+01:00` with trailing zeros of the fraction trimmed.
//! A fixed parser over bytes costs a few nanoseconds and allocates nothing; a date crate would
//! add a dependency for two functions.

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into Unix nanoseconds.
/// Lenient like kubelet's `RFC3339NanoLenient`: 't'/'z' are accepted, the fraction has 1 to 9
/// digits (more are cut), and `None` means the bytes are not such a timestamp.
pub fn parse_rfc3339_ns(s: &[u8]) -> Option<i64> {
    if s.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits(&s[r]);
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if s[i] == b'.' {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(s[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match s.get(i)? {
        b'Z' | b'z' if i + 1 == s.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == s.len() && s[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// The value of a run of ASCII digits (a fixed-width timestamp field); `None` if any is not one.
pub fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

/// Formats Unix nanoseconds as RFC3339Nano in UTC with `Z`, trailing zeros of the fraction
/// trimmed, as Go's `time.RFC3339Nano` does.
pub fn format_rfc3339_ns(ts_ns: i64, out: &mut String) {
    use std::fmt::Write;
    let secs = ts_ns.div_euclid(1_000_000_000);
    let nanos = ts_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if nanos != 0 {
        let mut frac = format!("{nanos:09}");
        while frac.ends_with('0') {
            frac.pop();
        }
        out.push('.');
        out.push_str(&frac);
    }
    out.push('Z');
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Now, in Unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_timestamps() {
        assert_eq!(parse_rfc3339_ns(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ns(b"2024-11-25T10:00:00.123456789Z"),
            Some(1_732_528_800_123_456_789)
        );
        assert_eq!(
            parse_rfc3339_ns(b"2024-11-25T10:00:00.1234Z"),
            Some(1_732_528_800_123_400_000)
        );
        assert_eq!(
            parse_rfc3339_ns(b"2024-11-25T11:00:00.5+01:00"),
            Some(1_732_528_800_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns(b"2024-11-25T09:30:00-00:30"),
            Some(1_732_528_800_000_000_000)
        );
        for bad in [
            &b"2024-11-25T10:00:00"[..],
            b"2024-11-25T10:00:00.Z",
            b"2024-13-25T10:00:00Z",
            b"2024-11-25T10:00:00Zjunk",
            b"2024-11-25X10:00:00Z",
            b"",
            b"not a timestamp at all",
        ] {
            assert_eq!(
                parse_rfc3339_ns(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn formats_like_go_rfc3339nano() {
        let mut s = String::new();
        format_rfc3339_ns(1_732_528_800_123_400_000, &mut s);
        assert_eq!(s, "2024-11-25T10:00:00.1234Z");
        s.clear();
        format_rfc3339_ns(0, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00Z");
        s.clear();
        format_rfc3339_ns(-1, &mut s);
        assert_eq!(s, "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn round_trips_every_day_of_four_centuries() {
        for days in (-146_097..146_097).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
