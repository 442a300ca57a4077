//! When to look: inotify on the directories that hold the log files.
//!
//! Discovery watches the pod log root, every pod directory, every container directory, and the
//! directories of RKE2's two files. A directory's watch also reports writes to its files
//! (`IN_MODIFY` with the file's name), so one watch per container covers its live and rotated
//! files, and kubelet's renames stay inside it. Per-file watches (Fluent Bit's way) would cost
//! one watch per file, and a rename or a fresh `0.log` would need a new one; a container
//! directory holds only its own few files, so a watch on it is no noisier.
//!
//! What is reported only says *when* to look, never *what* changed: a write wakes the file's
//! tailer; a file or directory created, renamed or removed makes discovery scan that directory
//! (or the whole tree, for the root and pod directories) through the same code as the safety
//! rescan. So events and rescans share one state machine.
//!
//! The kernel's limits: a full queue (`IN_Q_OVERFLOW`) has lost events, so the caller scans
//! everything and wakes every file. When the watches run out (`fs.inotify.max_user_watches`,
//! shared by every program of the same user on the node) or `tail.max_watches` is reached, the
//! directories without one are polled, as every file is where inotify is unavailable.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a watched directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    /// Directories (the pod log root, a pod's directory): a change means a full scan.
    Tree,
    /// Log files (a container's directory, RKE2's log directories).
    Files,
}

/// What the kernel reported, reduced to what discovery does about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A file in a [`DirKind::Files`] directory was written (or truncated).
    Written(PathBuf),
    /// A file of this [`DirKind::Files`] directory was created, renamed or removed.
    FilesChanged(PathBuf),
    /// A directory was made in (or moved into) a [`DirKind::Tree`] directory: a new pod's, or a
    /// new container's. Discovery lists just that directory.
    DirCreated(PathBuf),
    /// A directory of the tree went or was renamed, or a watched directory itself went.
    TreeChanged,
    /// The queue overflowed: events were lost.
    Overflow,
}

/// Why a directory has no watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `tail.max_watches` is reached.
    Cap,
    /// The kernel's limit (`ENOSPC`: `fs.inotify.max_user_watches`).
    Kernel,
    /// Anything else (the directory went, permissions); tried again on the next scan.
    Other,
}

const DIR_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;
const FILES_MASK: u32 = DIR_MASK | libc::IN_MODIFY;

pub struct Watcher {
    fd: OwnedFd,
    /// Watch descriptor → directory.
    dirs: HashMap<i32, (PathBuf, DirKind)>,
    /// Directory → watch descriptor.
    wds: HashMap<PathBuf, i32>,
    /// Most watches held at once (`tail.max_watches`; 0: the kernel's limit only).
    cap: usize,
    buf: Vec<u8>,
}

impl Watcher {
    /// An inotify instance; an error where inotify is unavailable (`EMFILE`:
    /// `fs.inotify.max_user_instances`, or a kernel or seccomp profile without it).
    pub fn new(cap: usize) -> io::Result<Watcher> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watcher {
            // SAFETY: `fd` was just opened and is owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            dirs: HashMap::new(),
            wds: HashMap::new(),
            cap,
            buf: vec![0u8; 64 << 10],
        })
    }

    /// Watches `dir` (nothing to do when it already is).
    pub fn watch(&mut self, dir: &Path, kind: DirKind) -> Result<(), Refused> {
        if self.wds.contains_key(dir) {
            return Ok(());
        }
        if self.cap > 0 && self.wds.len() >= self.cap {
            return Err(Refused::Cap);
        }
        let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
            return Err(Refused::Other);
        };
        let mask = match kind {
            DirKind::Tree => DIR_MASK,
            DirKind::Files => FILES_MASK,
        };
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOSPC) => Refused::Kernel,
                _ => Refused::Other,
            });
        }
        // A directory replaced under the same name gets a new descriptor; the old one was
        // dropped by the kernel (IN_IGNORED), which `read` handles.
        self.dirs.insert(wd, (dir.to_path_buf(), kind));
        self.wds.insert(dir.to_path_buf(), wd);
        Ok(())
    }

    pub fn watched(&self, dir: &Path) -> bool {
        self.wds.contains_key(dir)
    }

    pub fn watches(&self) -> usize {
        self.wds.len()
    }

    /// Waits up to `timeout` for something to read; true when there is.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, valid for the call.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }

    /// Appends what is queued to `out`, without blocking.
    pub fn read(&mut self, out: &mut Vec<Event>) {
        loop {
            // SAFETY: the buffer is valid for `len` bytes for the call.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n <= 0 {
                // EAGAIN: drained. Any other error: nothing more can be read now, and the
                // safety rescan covers what it hid.
                return;
            }
            self.parse(n as usize, out);
        }
    }

    fn parse(&mut self, n: usize, out: &mut Vec<Event>) {
        const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
        let mut at = 0;
        while at + HEAD <= n {
            // SAFETY: the kernel wrote whole events; `read_unaligned` copies the header out of
            // the byte buffer whatever its alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(self.buf[at..].as_ptr().cast()) };
            let name_len = ev.len as usize;
            let name_bytes = &self.buf[(at + HEAD).min(n)..(at + HEAD + name_len).min(n)];
            let name = &name_bytes[..name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len())];
            at += HEAD + name_len;
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                out.push(Event::Overflow);
                continue;
            }
            if ev.mask & libc::IN_IGNORED != 0 {
                // The kernel dropped the watch (the directory went).
                if let Some((dir, _)) = self.dirs.remove(&ev.wd) {
                    if self.wds.get(&dir) == Some(&ev.wd) {
                        self.wds.remove(&dir);
                    }
                }
                out.push(Event::TreeChanged);
                continue;
            }
            let Some((dir, kind)) = self.dirs.get(&ev.wd) else {
                continue;
            };
            let event = match kind {
                _ if ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 => {
                    Event::TreeChanged
                }
                DirKind::Tree
                    if ev.mask & libc::IN_ISDIR != 0
                        && ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 =>
                {
                    Event::DirCreated(dir.join(OsStr::from_bytes(name)))
                }
                DirKind::Tree => Event::TreeChanged,
                DirKind::Files if ev.mask & libc::IN_MODIFY != 0 => {
                    Event::Written(dir.join(OsStr::from_bytes(name)))
                }
                DirKind::Files => Event::FilesChanged(dir.clone()),
            };
            out.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn events(w: &mut Watcher) -> Vec<Event> {
        assert!(w.wait(Duration::from_secs(2)), "no event");
        let mut out = Vec::new();
        w.read(&mut out);
        out.dedup();
        out
    }

    #[test]
    fn writes_renames_and_new_directories_are_told_apart() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ns_p_u").join("c");
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Watcher::new(0).unwrap();
        w.watch(root.path(), DirKind::Tree).unwrap();
        w.watch(&dir, DirKind::Files).unwrap();
        assert!(w.watch(&dir, DirKind::Files).is_ok(), "twice is once");
        assert_eq!(w.watches(), 2);

        let log = dir.join("0.log");
        let mut f = std::fs::File::create(&log).unwrap();
        assert_eq!(events(&mut w), [Event::FilesChanged(dir.clone())]);
        f.write_all(b"a line\n").unwrap();
        assert_eq!(events(&mut w), [Event::Written(log.clone())]);
        std::fs::rename(&log, dir.join("0.log.20261207-100000")).unwrap();
        assert_eq!(events(&mut w), [Event::FilesChanged(dir.clone())]);
        std::fs::create_dir(root.path().join("ns_q_v")).unwrap();
        assert_eq!(
            events(&mut w),
            [Event::DirCreated(root.path().join("ns_q_v"))]
        );
        std::fs::rename(root.path().join("ns_q_v"), root.path().join("ns_q_w")).unwrap();
        assert_eq!(
            events(&mut w),
            [
                Event::TreeChanged,
                Event::DirCreated(root.path().join("ns_q_w"))
            ]
        );

        // A watched directory that goes takes its watch with it (once nothing holds a file of
        // it open: an open file keeps its directory's inode).
        drop(f);
        std::fs::remove_dir_all(root.path().join("ns_p_u")).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while w.watched(&dir) && std::time::Instant::now() < deadline {
            w.wait(Duration::from_millis(100));
            w.read(&mut seen);
        }
        assert!(seen.contains(&Event::TreeChanged), "{seen:?}");
        assert!(!w.watched(&dir), "{seen:?}");
    }

    #[test]
    fn a_cap_refuses_watches_past_it() {
        let root = tempfile::tempdir().unwrap();
        let mut w = Watcher::new(1).unwrap();
        w.watch(root.path(), DirKind::Tree).unwrap();
        let other = root.path().join("c");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(w.watch(&other, DirKind::Files), Err(Refused::Cap));
        assert_eq!(
            w.watch(&root.path().join("missing"), DirKind::Files),
            Err(Refused::Cap)
        );
        let mut w = Watcher::new(0).unwrap();
        assert_eq!(
            w.watch(&root.path().join("missing"), DirKind::Files),
            Err(Refused::Other)
        );
    }
}
