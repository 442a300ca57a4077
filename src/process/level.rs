//! Log levels, normalised so that Loki's `detected_level` and the seed's queries read them:
//! lower case, with common spellings folded (contract §1: `warn`/`warning` → `warn`,
//! `err`/`error` → `error`, `fatal`/`crit`/`critical` → `critical`).

/// Longest level value kept; a longer one is not a level but a misuse of the field.
const MAX_LEVEL_LEN: usize = 16;

/// Normalises a textual level into `out`, returning the normalised text, or `None` when the
/// value is empty, too long, or not ASCII.
pub fn normalize<'o>(raw: &[u8], out: &'o mut [u8; MAX_LEVEL_LEN]) -> Option<&'o str> {
    let raw = raw.trim_ascii();
    if raw.is_empty() || raw.len() > MAX_LEVEL_LEN || !raw.is_ascii() {
        return None;
    }
    let lower = &mut out[..raw.len()];
    lower.copy_from_slice(raw);
    lower.make_ascii_lowercase();
    let folded: &'static str = match &*lower {
        b"warn" | b"warning" => "warn",
        b"err" | b"error" => "error",
        b"fatal" | b"crit" | b"critical" => "critical",
        _ => return std::str::from_utf8(&out[..raw.len()]).ok(),
    };
    Some(folded)
}

/// Numeric levels of bunyan and pino (10 trace … 60 fatal).
pub fn from_number(n: f64) -> Option<&'static str> {
    Some(match n as i64 {
        10 => "trace",
        20 => "debug",
        30 => "info",
        40 => "warn",
        50 => "error",
        60 => "critical",
        _ => return None,
    })
}

pub type LevelBuf = [u8; MAX_LEVEL_LEN];

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Option<String> {
        let mut buf = [0u8; MAX_LEVEL_LEN];
        normalize(s.as_bytes(), &mut buf).map(str::to_string)
    }

    #[test]
    fn folds_the_contract_spellings() {
        for (raw, want) in [
            ("WARN", "warn"),
            ("warning", "warn"),
            ("Err", "error"),
            ("ERROR", "error"),
            ("fatal", "critical"),
            ("crit", "critical"),
            ("CRITICAL", "critical"),
            ("Info", "info"),
            ("debug", "debug"),
            (" trace ", "trace"),
            ("dpanic", "dpanic"),
        ] {
            assert_eq!(n(raw).as_deref(), Some(want), "{raw}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_level() {
        assert_eq!(n(""), None);
        assert_eq!(n("a very long value that is no level"), None);
        assert_eq!(n("ínfo"), None);
        assert_eq!(from_number(30.0), Some("info"));
        assert_eq!(from_number(33.0), None);
    }
}
