//! ringtail's own log lines, on stderr, as logfmt or JSON (`log.format`).
//!
//! Why not a logging framework: one line format chosen at start, written with one `write_all`
//! per record, needs 40 lines, not a dependency tree.

use std::io::Write;

use crate::config::{LogFormat, LogLevel};
use crate::timefmt::{format_rfc3339_ns, now_ns};

struct StderrLogger {
    format: LogFormat,
    max: log::LevelFilter,
}

impl log::Log for StderrLogger {
    /// kube-client's own records only at `log.level: debug`: it logs every failed request at
    /// error level, and ringtail logs each failure itself, once, with what to do about it.
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.max
            && (self.max >= log::LevelFilter::Debug || !m.target().starts_with("kube"))
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut ts = String::with_capacity(32);
        format_rfc3339_ns(now_ns(), &mut ts);
        let level = r.level().as_str().to_ascii_lowercase();
        let msg = r.args().to_string();
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let line = match self.format {
            LogFormat::Logfmt => format!(
                "ts={ts} level={level} target={} msg={}\n",
                r.target(),
                quote(&msg)
            ),
            LogFormat::Json => format!(
                "{{\"ts\":\"{ts}\",\"level\":\"{level}\",\"target\":{},\"msg\":{}}}\n",
                quote(r.target()),
                quote(&msg)
            ),
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger; later calls are ignored.
pub fn init(level: LogLevel, format: LogFormat) {
    let max = match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
    };
    if log::set_boxed_logger(Box::new(StderrLogger { format, max })).is_ok() {
        log::set_max_level(max);
    }
}
