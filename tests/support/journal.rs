//! Real journal files for the journal tests and bench: entries written in the journal export
//! format and turned into `.journal` files by `systemd-journal-remote` (Debian's package
//! `systemd-journal-remote`), which keeps the given timestamps and fields, compresses large
//! values (zstd) and rotates files by itself.
//!
//! Realtime timestamps must increase across everything written into one directory, or a reader
//! merges the later-written entries behind its position: [`JournalDir::write`] checks it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The writer, as Debian installs it.
pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// The boot ID every generated entry carries.
pub const BOOT_ID: &str = "0123456789abcdef0123456789abcdef";

/// One journal entry: its realtime timestamp (µs since the epoch) and its fields, in order.
/// `__REALTIME_TIMESTAMP`, `__MONOTONIC_TIMESTAMP` and `_BOOT_ID` are added when written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub realtime_us: u64,
    /// (name, value, binary): `binary` forces the export format's binary form.
    pub fields: Vec<(String, Vec<u8>, bool)>,
}

impl JournalEntry {
    pub fn new(realtime_us: u64) -> JournalEntry {
        JournalEntry {
            realtime_us,
            fields: Vec::new(),
        }
    }

    /// Adds a field; values with a newline or invalid UTF-8 are written in binary form.
    pub fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> JournalEntry {
        self.fields
            .push((name.to_string(), value.as_ref().to_vec(), false));
        self
    }

    /// Adds a field written in the binary form, whatever its value.
    pub fn binary_field(mut self, name: &str, value: impl AsRef<[u8]>) -> JournalEntry {
        self.fields
            .push((name.to_string(), value.as_ref().to_vec(), true));
        self
    }

    /// The value of the first field `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_slice())
    }

    /// Realtime in nanoseconds, as ringtail sends it.
    pub fn ts_ns(&self) -> i64 {
        self.realtime_us as i64 * 1000
    }
}

/// Appends `entries` to `out` in the journal export format: `KEY=VALUE\n` for text values,
/// `KEY\n<u64 LE length><bytes>\n` for binary ones, a blank line after each entry.
/// `monotonic_us` is the first entry's monotonic timestamp; it grows by one per entry.
pub fn export(entries: &[JournalEntry], monotonic_us: u64, out: &mut Vec<u8>) {
    for (i, e) in entries.iter().enumerate() {
        let _ = write!(
            out,
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={BOOT_ID}\n",
            e.realtime_us,
            monotonic_us + i as u64
        );
        for (name, value, binary) in &e.fields {
            let text = !binary && !value.contains(&b'\n') && std::str::from_utf8(value).is_ok();
            out.extend_from_slice(name.as_bytes());
            if text {
                out.push(b'=');
                out.extend_from_slice(value);
            } else {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
}

/// A directory of journal files written by `systemd-journal-remote`.
pub struct JournalDir {
    path: PathBuf,
    monotonic_us: u64,
    last_realtime_us: u64,
}

impl JournalDir {
    /// Creates `path` (and its parents) when missing.
    pub fn new(path: &Path) -> JournalDir {
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        JournalDir {
            path: path.to_path_buf(),
            monotonic_us: 1_000_000,
            last_realtime_us: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entries` to `<dir>/<name>.journal` (created when missing) with one run of
    /// `systemd-journal-remote`; returns the file's path. Panics when timestamps do not
    /// increase, or the writer fails.
    pub fn write(&mut self, name: &str, entries: &[JournalEntry]) -> PathBuf {
        for e in entries {
            assert!(
                e.realtime_us > self.last_realtime_us,
                "realtime timestamps must increase across the directory: {} after {}",
                e.realtime_us,
                self.last_realtime_us
            );
            self.last_realtime_us = e.realtime_us;
        }
        let mut body = Vec::new();
        export(entries, self.monotonic_us, &mut body);
        self.monotonic_us += entries.len() as u64;
        let file = self.path.join(format!("{name}.journal"));
        write_journal(&file, &body);
        file
    }
}

/// Runs `systemd-journal-remote --output=<file> -` with `export` on its stdin.
pub fn write_journal(file: &Path, export: &[u8]) {
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("spawn {JOURNAL_REMOTE}: {e} (install Debian's systemd-journal-remote)")
        });
    let mut stdin = child.stdin.take().expect("stdin");
    let body = export.to_vec();
    let feeder = std::thread::spawn(move || {
        let r = stdin.write_all(&body);
        drop(stdin);
        r
    });
    let out = child.wait_with_output().expect("wait for journal-remote");
    let fed = feeder.join().expect("feeder thread");
    assert!(
        out.status.success() && fed.is_ok(),
        "journal-remote --output={}: {:?} {fed:?}\n{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Now, in µs since the epoch.
pub fn realtime_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// `pods_only_config`'s text with the journal enabled on `path`, `max_age` as given.
pub fn with_journal(config: &str, path: &Path, max_age: &str) -> String {
    let q = serde_json::to_string(&path.to_string_lossy()).expect("quote");
    let out = config.replacen(
        "  journal:\n    enabled: false\n",
        &format!("  journal:\n    enabled: true\n    path: {q}\n    max_age: {max_age}\n"),
        1,
    );
    assert!(out.contains("max_age"), "no journal block in\n{config}");
    out
}
