//! The positions file on disk: versioned JSON, written atomically (temp file, rename), read back
//! at start. A durable write also fsyncs the file before the rename and the directory after it.
//!
//! A temp file that parses is newer than the main file (the last run died between writing and
//! renaming it), so it wins. A file that does not parse (truncated, NUL-filled: loki#6268) is
//! logged, set aside under a `.corrupt-<unix time>` name for a post-mortem, and ringtail starts
//! fresh rather than crash.
//!
//! Between two such snapshots, writes are appended to `positions.changes`: one JSON object a
//! line, the entries that changed (as in the snapshot), `{"gone":[dev,ino]}` for a file let go,
//! `{"journal_cursor":…}`, then `{"saved_at":N}`, which commits the lines before it. Rewriting
//! every entry for every acked batch cost a write proportional to the files tracked, not to
//! what changed: with 2,000 files trickling, 90 % of the sender's CPU. Loading applies the
//! committed lines over the snapshot, in order. Lines after the last commit (a write cut short
//! by a crash of the machine) or from a line that does not parse are not used, and the loader
//! says which: those files resume from an older position, which re-sends lines, never loses
//! them. A stale changes file (a crash between a new snapshot and the truncation of the changes
//! file) holds only positions older than the snapshot's: duplicates again, not loss.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::entry::{FileKey, Fingerprint};

pub const FILE_NAME: &str = "positions.json";
/// Appended to between snapshots (see the module doc).
pub const CHANGES_NAME: &str = "positions.changes";

/// One file's committed position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePos {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub fp_len: u32,
    pub fp_hash: u64,
    pub offset: u64,
}

impl FilePos {
    pub fn key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            ino: self.ino,
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            len: self.fp_len,
            hash: self.fp_hash,
        }
    }
}

/// The file's content. `version` is a tag so that a later format can read this one.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum State {
    #[default]
    #[serde(rename = "0")]
    Empty,
    #[serde(rename = "1")]
    V1 {
        /// Unix seconds of the write: files rotated after it were written while ringtail was
        /// down, and are read even without a position.
        saved_at: u64,
        files: Vec<FilePos>,
        /// The journal's cursor; absent (and left out) when the journal is not read, so files
        /// written before it existed read the same.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        journal_cursor: Option<String>,
    },
}

/// What loading found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub files: Vec<FilePos>,
    pub journal_cursor: Option<String>,
    pub saved_at: Option<u64>,
    /// Set when a corrupt file was set aside: say so in the logs and metrics.
    pub set_aside: Option<PathBuf>,
    /// Why the changes file was not used to its end (the file and line), to be logged.
    pub changes_cut: Option<String>,
}

/// One line of the changes file.
#[derive(Deserialize)]
#[serde(untagged)]
enum Change {
    File(FilePos),
    Gone { gone: (u64, u64) },
    Journal { journal_cursor: String },
    Commit { saved_at: u64 },
}

/// The snapshot, with the committed lines of the changes file applied over it.
pub fn load(dir: &Path) -> std::io::Result<Loaded> {
    let mut l = load_snapshot(dir)?;
    let path = dir.join(CHANGES_NAME);
    match fs::read(&path) {
        Ok(bytes) => apply_changes(&bytes, &path, &mut l),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(l)
}

fn apply_changes(bytes: &[u8], path: &Path, l: &mut Loaded) {
    let mut files: std::collections::HashMap<FileKey, FilePos> =
        l.files.drain(..).map(|p| (p.key(), p)).collect();
    let mut pending: Vec<Change> = Vec::new();
    let mut pending_from = 0;
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Change>(line) {
            Ok(Change::Commit { saved_at }) => {
                for c in pending.drain(..) {
                    match c {
                        Change::File(p) => {
                            files.insert(p.key(), p);
                        }
                        Change::Gone { gone: (dev, ino) } => {
                            files.remove(&FileKey { dev, ino });
                        }
                        Change::Journal { journal_cursor } => {
                            l.journal_cursor = Some(journal_cursor)
                        }
                        Change::Commit { .. } => {}
                    }
                }
                l.saved_at = Some(saved_at);
            }
            Ok(c) => {
                if pending.is_empty() {
                    pending_from = i + 1;
                }
                pending.push(c);
            }
            Err(e) => {
                l.changes_cut = Some(format!(
                    "{} line {} does not parse ({e}); it and the lines after it are not used",
                    path.display(),
                    i + 1
                ));
                pending.clear();
                break;
            }
        }
    }
    if !pending.is_empty() {
        l.changes_cut = Some(format!(
            "{} ends with a write cut short (lines {pending_from} and after, without their \
             commit line); they are not used",
            path.display()
        ));
    }
    l.files = files.into_values().collect();
    // In the snapshot's order.
    l.files
        .sort_unstable_by(|a, b| order_key(a).cmp(&order_key(b)));
}

/// The order of the entries in a snapshot: by path bytes, then inode. It only makes the file
/// deterministic; comparing paths by components was half the cost of a write with 2,000 files
/// (perf, trickle bench).
pub fn order_key(p: &FilePos) -> (&[u8], u64) {
    (p.path.as_os_str().as_bytes(), p.ino)
}

fn load_snapshot(dir: &Path) -> std::io::Result<Loaded> {
    let main = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    if let Ok(bytes) = fs::read(&tmp) {
        if let Ok(state) = serde_json::from_slice::<State>(&bytes) {
            return Ok(loaded(state, None));
        }
    }
    let bytes = match fs::read(&main) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<State>(&bytes) {
        Ok(state) => Ok(loaded(state, None)),
        Err(_) => {
            let aside = dir.join(format!("{FILE_NAME}.corrupt-{}", unix_now()));
            fs::rename(&main, &aside)?;
            Ok(loaded(State::Empty, Some(aside)))
        }
    }
}

fn loaded(state: State, set_aside: Option<PathBuf>) -> Loaded {
    match state {
        State::Empty => Loaded {
            set_aside,
            ..Loaded::default()
        },
        State::V1 {
            saved_at,
            files,
            journal_cursor,
        } => Loaded {
            files,
            journal_cursor,
            saved_at: Some(saved_at),
            set_aside,
            changes_cut: None,
        },
    }
}

/// One file's entry as [`save`] writes it: the JSON of its [`FilePos`]. Entries are rendered
/// once per change and kept by [`Positions`](super::Positions), so that a write (one per acked
/// batch) renders only what changed: with 2,000 files, rendering and sorting them all was 60 %
/// of the sender's CPU on a trickling node (perf, e2e bench `E2E_IDLE=trickle`). Fails only for
/// a path that is not UTF-8, which JSON cannot hold.
pub fn render(p: &FilePos, out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.clear();
    serde_json::to_writer(out, p)
}

/// Writes the positions atomically; on error the previous file is left as it was. `files` are
/// [`render`]ed entries; the document is [`State::V1`], byte for byte. Without `durable`, the
/// new file survives a crash of the process (it is in the page cache) but not necessarily of
/// the machine. Returns the bytes written. The caller empties the changes file next.
pub fn save<'a>(
    dir: &Path,
    files: impl Iterator<Item = &'a [u8]>,
    journal_cursor: Option<&str>,
    durable: bool,
) -> std::io::Result<u64> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let len;
    {
        let mut w = BufWriter::with_capacity(64 << 10, File::create(&tmp)?);
        write!(w, r#"{{"version":"1","saved_at":{},"files":["#, unix_now())?;
        for (i, f) in files.enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            w.write_all(f)?;
        }
        w.write_all(b"]")?;
        if let Some(c) = journal_cursor {
            w.write_all(br#","journal_cursor":"#)?;
            serde_json::to_writer(&mut w, c).map_err(std::io::Error::other)?;
        }
        w.write_all(b"}")?;
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        len = f.stream_position()?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, dir.join(FILE_NAME))?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(len)
}

/// Opens the changes file for appending, empty: right after a snapshot, which holds all of it.
pub fn start_changes(dir: &Path) -> std::io::Result<File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(CHANGES_NAME))?;
    f.set_len(0)?;
    Ok(f)
}

/// Renders one write's changes into `out`, ready to append: the files that changed (rendered
/// entries), those let go, the journal cursor if it moved, then the commit line.
pub fn render_changes<'a>(
    out: &mut Vec<u8>,
    gone: &[FileKey],
    files: impl Iterator<Item = &'a [u8]>,
    journal_cursor: Option<&str>,
) -> std::io::Result<()> {
    out.clear();
    // Gone first: a file let go and tracked again within one write ends up tracked.
    for k in gone {
        writeln!(out, r#"{{"gone":[{},{}]}}"#, k.dev, k.ino)?;
    }
    for f in files {
        out.extend_from_slice(f);
        out.push(b'\n');
    }
    if let Some(c) = journal_cursor {
        out.extend_from_slice(br#"{"journal_cursor":"#);
        serde_json::to_writer(&mut *out, c).map_err(std::io::Error::other)?;
        out.extend_from_slice(b"}\n");
    }
    writeln!(out, r#"{{"saved_at":{}}}"#, unix_now())
}

/// fsyncs the positions file, the changes file and their directory: what [`save`] without
/// `durable`, and the appends since, left to do.
pub fn sync(dir: &Path) -> std::io::Result<()> {
    File::open(dir.join(FILE_NAME))?.sync_all()?;
    match File::open(dir.join(CHANGES_NAME)) {
        Ok(f) => f.sync_all()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    File::open(dir)?.sync_all()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ino: u64, offset: u64) -> FilePos {
        FilePos {
            path: PathBuf::from(format!("/var/log/pods/ns_p_u/c/{ino}.log")),
            dev: 2049,
            ino,
            fp_len: 1024,
            fp_hash: 0xdead_beef_cafe_f00d,
            offset,
        }
    }

    #[test]
    fn golden_bytes_of_version_1() {
        // Guards the on-disk format: change it only with a new version and a reader for this one.
        let state = State::V1 {
            saved_at: 1_732_528_800,
            files: vec![pos(7, 42)],
            journal_cursor: None,
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            text,
            r#"{"version":"1","saved_at":1732528800,"files":[{"path":"/var/log/pods/ns_p_u/c/7.log","dev":2049,"ino":7,"fp_len":1024,"fp_hash":16045690984503111693,"offset":42}]}"#
        );
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), state);
        let with_cursor = State::V1 {
            saved_at: 1,
            files: vec![],
            journal_cursor: Some("s=1;i=2".into()),
        };
        assert_eq!(
            serde_json::to_string(&with_cursor).unwrap(),
            r#"{"version":"1","saved_at":1,"files":[],"journal_cursor":"s=1;i=2"}"#
        );
        // What `save` writes is the same text.
        let dir = tempfile::tempdir().unwrap();
        for (state, cursor) in [(&state, None), (&with_cursor, Some("s=1;i=2"))] {
            let State::V1 { files, .. } = state else {
                unreachable!()
            };
            let rendered = rendered(files);
            save(
                dir.path(),
                rendered.iter().map(Vec::as_slice),
                cursor,
                false,
            )
            .unwrap();
            let written = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
            let back: State = serde_json::from_str(&written).unwrap();
            let State::V1 { saved_at, .. } = back else {
                panic!("{written}")
            };
            let expected = serde_json::to_string(&match state {
                State::V1 {
                    files,
                    journal_cursor,
                    ..
                } => State::V1 {
                    saved_at,
                    files: files.clone(),
                    journal_cursor: journal_cursor.clone(),
                },
                State::Empty => unreachable!(),
            })
            .unwrap();
            assert_eq!(written, expected);
        }
    }

    fn rendered(files: &[FilePos]) -> Vec<Vec<u8>> {
        files
            .iter()
            .map(|p| {
                let mut out = Vec::new();
                render(p, &mut out).unwrap();
                out
            })
            .collect()
    }

    fn save_all(dir: &Path, files: &[FilePos], durable: bool) {
        let r = rendered(files);
        save(dir, r.iter().map(Vec::as_slice), None, durable).unwrap();
    }

    #[test]
    fn a_path_that_is_not_utf8_does_not_render() {
        use std::os::unix::ffi::OsStrExt;
        let mut p = pos(1, 1);
        p.path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/var/log/\xff.log"));
        assert!(render(&p, &mut Vec::new()).is_err());
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        save_all(dir.path(), &[pos(1, 10), pos(2, 20)], true);
        let l = load(dir.path()).unwrap();
        assert_eq!(l.files, vec![pos(1, 10), pos(2, 20)]);
        assert!(l.saved_at.is_some() && l.set_aside.is_none());
        assert!(!dir.path().join("positions.json.tmp").exists());
    }

    #[test]
    fn a_complete_temp_file_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        save_all(dir.path(), &[pos(1, 10)], false);
        let newer = State::V1 {
            saved_at: 1,
            files: vec![pos(1, 99)],
            journal_cursor: None,
        };
        let tmp = dir.path().join("positions.json.tmp");
        fs::write(&tmp, serde_json::to_vec(&newer).unwrap()).unwrap();
        assert_eq!(load(dir.path()).unwrap().files, vec![pos(1, 99)]);
        fs::write(&tmp, b"{\"version\":\"1\",\"sav").unwrap();
        assert_eq!(load(dir.path()).unwrap().files, vec![pos(1, 10)]);
    }

    #[test]
    fn corrupt_files_are_set_aside() {
        for junk in [&b"\0\0\0\0\0\0"[..], b"positions: {", b""] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(FILE_NAME), junk).unwrap();
            let l = load(dir.path()).unwrap();
            assert!(l.files.is_empty());
            let aside = l.set_aside.expect("set aside");
            assert_eq!(fs::read(&aside).unwrap(), junk);
            assert!(!dir.path().join(FILE_NAME).exists());
        }
    }

    /// Only committed lines of the changes file count: a write cut short at its end, or a line
    /// that does not parse (NUL bytes after a machine crash), ends what is used, and is said.
    #[test]
    fn changes_count_only_up_to_their_last_commit_and_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        save_all(dir.path(), &[pos(1, 10), pos(2, 10)], false);
        let line = |p: &FilePos| {
            let mut v = Vec::new();
            render(p, &mut v).unwrap();
            String::from_utf8(v).unwrap()
        };
        let committed = format!(
            "{{\"gone\":[2049,2]}}\n{}\n{{\"saved_at\":5}}\n",
            line(&pos(1, 20))
        );
        let offsets = |l: &Loaded| {
            l.files
                .iter()
                .map(|f| (f.ino, f.offset))
                .collect::<Vec<_>>()
        };
        let changes = dir.path().join(CHANGES_NAME);

        fs::write(&changes, format!("{committed}{}\n", line(&pos(1, 30)))).unwrap();
        let l = load(dir.path()).unwrap();
        assert_eq!(offsets(&l), [(1, 20)]);
        assert_eq!(l.saved_at, Some(5));
        let why = l.changes_cut.unwrap();
        assert!(why.contains("cut short (lines 4 and after"), "{why}");

        let mut torn = committed.into_bytes();
        torn.extend_from_slice(&[0; 64]);
        torn.extend_from_slice(format!("\n{}\n{{\"saved_at\":6}}\n", line(&pos(1, 40))).as_bytes());
        fs::write(&changes, torn).unwrap();
        let l = load(dir.path()).unwrap();
        assert_eq!(offsets(&l), [(1, 20)]);
        let why = l.changes_cut.unwrap();
        assert!(
            why.contains("positions.changes line 4 does not parse"),
            "{why}"
        );
    }

    #[test]
    fn missing_file_is_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let l = load(dir.path()).unwrap();
        assert!(l.files.is_empty() && l.saved_at.is_none() && l.set_aside.is_none());
    }
}
