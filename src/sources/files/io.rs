//! Batched file reads and stats: io_uring where the kernel allows it, `pread`/`statx` where not.
//!
//! One submission carries the reads (or stats) of many files, so a pass over a thousand files
//! costs one `io_uring_enter` instead of a thousand syscalls. io_uring is blocked by the
//! `RuntimeDefault` seccomp profile of containerd 2.0 and Docker (EPERM) and by
//! `kernel.io_uring_disabled`; `auto` then falls back to plain syscalls, logs which path runs,
//! and `ringtail_io_mode` shows it.
//!
//! All `unsafe` of the crate is here: the kernel writes into buffers and stat structs that this
//! module keeps borrowed until every completion of the submission has been reaped.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use crate::config::IoMode;
use crate::telemetry::metrics::METRICS;

/// One read: `buf.len()` bytes at `offset` of `fd`.
pub struct ReadReq<'a> {
    pub fd: RawFd,
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// What a stat found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub regular: bool,
}

/// The read path in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    IoUring,
    Pread,
}

impl IoKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IoKind::IoUring => "io_uring",
            IoKind::Pread => "pread",
        }
    }
}

pub struct BatchIo {
    ring: Option<IoUring>,
    depth: usize,
    /// Submission entries, reused across batches.
    sqes: Vec<io_uring::squeue::Entry>,
}

/// Below this many paths, a stat batch makes plain statx calls (see [`BatchIo::stat_batch`]).
const SMALL_STAT_BATCH: usize = 16;
const DEPTH: u32 = 256;

impl BatchIo {
    /// Opens the path `mode` asks for; `auto` tries io_uring first. `who` names the thread in
    /// the log line that says which path runs.
    pub fn new(mode: IoMode, who: &str) -> io::Result<BatchIo> {
        let ring = match mode {
            IoMode::Pread => None,
            IoMode::IoUring => Some(probe()?),
            IoMode::Auto => match probe() {
                Ok(r) => Some(r),
                Err(e) => {
                    log::warn!(
                        "{who}: io_uring is unavailable ({e}); using pread. This is expected under \
                         the RuntimeDefault seccomp profile or with kernel.io_uring_disabled"
                    );
                    None
                }
            },
        };
        let io = BatchIo {
            ring,
            depth: DEPTH as usize,
            sqes: Vec::with_capacity(DEPTH as usize),
        };
        log::info!("{who}: reading files with {}", io.kind().as_str());
        METRICS
            .io_mode
            .get_or_create(&vec![("mode", io.kind().as_str().to_string())])
            .set(1);
        Ok(io)
    }

    /// io_uring failed at run time (with nothing in flight): drop the ring, whose queue may
    /// still hold entries the kernel never saw, and use plain syscalls from now on.
    fn fall_back(&mut self, e: &io::Error) {
        log::warn!("io_uring failed ({e}); switching to pread for good");
        self.ring = None;
        METRICS
            .io_mode
            .get_or_create(&vec![("mode", IoKind::IoUring.as_str().to_string())])
            .set(0);
        METRICS
            .io_mode
            .get_or_create(&vec![("mode", IoKind::Pread.as_str().to_string())])
            .set(1);
    }

    pub fn kind(&self) -> IoKind {
        if self.ring.is_some() {
            IoKind::IoUring
        } else {
            IoKind::Pread
        }
    }

    /// Reads every request; `out[i]` is the byte count read for `reqs[i]`, or its error.
    pub fn read_batch(&mut self, reqs: &mut [ReadReq<'_>], out: &mut Vec<io::Result<usize>>) {
        out.clear();
        let Some(ring) = self.ring.as_mut() else {
            for r in reqs.iter_mut() {
                out.push(pread(r.fd, r.buf, r.offset));
            }
            return;
        };
        out.resize_with(reqs.len(), || Ok(0));
        for (base, group) in reqs.chunks_mut(self.depth).enumerate() {
            self.sqes.clear();
            self.sqes.extend(group.iter_mut().enumerate().map(|(i, r)| {
                let len = r.buf.len().min(u32::MAX as usize) as u32;
                opcode::Read::new(types::Fd(r.fd), r.buf.as_mut_ptr(), len)
                    .offset(r.offset)
                    .build()
                    .user_data((base * DEPTH as usize + i) as u64)
            }));
            // SAFETY: every buffer is borrowed mutably from `reqs` for this whole call, and
            // `submit_all` does not return while a submitted entry is outstanding, so the kernel
            // never writes into memory that was freed or lent elsewhere.
            if let Err(e) = unsafe { submit_all(ring, &self.sqes, out) } {
                self.fall_back(&e);
                out.clear();
                for r in reqs.iter_mut() {
                    out.push(pread(r.fd, r.buf, r.offset));
                }
                return;
            }
        }
    }

    /// Stats every path (without following symlinks).
    pub fn stat_batch(&mut self, paths: &[CString], out: &mut Vec<io::Result<Stat>>) {
        out.clear();
        // io_uring runs every statx on an io-wq worker thread: for the few files of one burst
        // of inotify events, plain statx costs fewer wakeups (idle bench, trickle mode).
        let ring = self
            .ring
            .as_mut()
            .filter(|_| paths.len() >= SMALL_STAT_BATCH);
        let Some(ring) = ring else {
            for p in paths {
                out.push(stat_path(p));
            }
            return;
        };
        // One submission's worth of stat buffers, reused group by group: a scan of 10,000 files
        // does not hold 10,000 of them (2.5 MB) at once.
        // SAFETY: `libc::statx` is plain old data; all-zero is a valid value.
        let mut bufs: Vec<libc::statx> = vec![unsafe { std::mem::zeroed() }; self.depth];
        let mut results: Vec<io::Result<usize>> = Vec::with_capacity(self.depth);
        for (gi, group) in paths.chunks(self.depth).enumerate() {
            results.clear();
            results.resize_with(group.len(), || Ok(0));
            let entries: Vec<_> = group
                .iter()
                .zip(bufs.iter_mut())
                .enumerate()
                .map(|(i, (p, b))| {
                    opcode::Statx::new(
                        types::Fd(libc::AT_FDCWD),
                        p.as_ptr(),
                        (b as *mut libc::statx).cast::<types::statx>(),
                    )
                    .flags(libc::AT_SYMLINK_NOFOLLOW)
                    .mask(libc::STATX_BASIC_STATS)
                    .build()
                    .user_data(i as u64)
                })
                .collect();
            // SAFETY: the paths and stat buffers outlive this call, and `submit_all` does not
            // return while a submitted entry is outstanding.
            if let Err(e) = unsafe { submit_all(ring, &entries, &mut results) } {
                self.fall_back(&e);
                out.extend(paths[gi * self.depth..].iter().map(stat_path));
                return;
            }
            for (r, b) in results.drain(..).zip(&bufs) {
                out.push(r.map(|_| stat_from(b)));
            }
        }
    }
}

fn probe() -> io::Result<IoUring> {
    let mut ring = IoUring::new(DEPTH)?;
    // A NOP round trip: setup can succeed where io_uring_enter is filtered.
    let nop = opcode::Nop::new().build().user_data(0);
    let mut out = vec![Ok(0)];
    // SAFETY: a NOP touches no memory.
    unsafe { submit_all(&mut ring, &[nop], &mut out) }?;
    out.pop().unwrap_or(Ok(0))?;
    Ok(ring)
}

/// Submits `entries` and waits for all of their completions, storing each result at the index
/// in its `user_data`.
///
/// An error is returned only when nothing is in flight; entries may then still sit in the
/// submission queue, never seen by the kernel, so the caller must drop the ring (and use pread).
///
/// # Safety
/// Every buffer an entry points to must stay valid until this returns. It returns only once no
/// submitted entry is outstanding; if the ring fails for good while some are, it aborts the
/// process rather than return with the kernel still writing into the buffers.
unsafe fn submit_all(
    ring: &mut IoUring,
    entries: &[io_uring::squeue::Entry],
    out: &mut [io::Result<usize>],
) -> io::Result<()> {
    let mut pushed = 0;
    let mut done = 0;
    while done < entries.len() {
        {
            let mut sq = ring.submission();
            while pushed < entries.len() {
                // SAFETY: the caller keeps every buffer alive until all completions are reaped.
                if unsafe { sq.push(&entries[pushed]) }.is_err() {
                    break;
                }
                pushed += 1;
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let queued = ring.submission().len();
                let in_flight = pushed - queued - done;
                if in_flight == 0 {
                    return Err(e);
                }
                if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) {
                    // The kernel is short of resources for now; completions will come.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                } else {
                    log::error!(
                        "io_uring failed with {in_flight} reads in flight: {e}; aborting to stay \
                         memory-safe (the pod restarts and resumes from its positions)"
                    );
                    std::process::abort();
                }
            }
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize % out.len().max(1);
            let res = cqe.result();
            out[i] = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            done += 1;
        }
    }
    Ok(())
}

fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, exclusively borrowed buffer of `buf.len()` bytes.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset as i64) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Stats one path without following symlinks.
pub fn stat_path(p: &CString) -> io::Result<Stat> {
    // SAFETY: all-zero is a valid `statx`; the kernel fills it.
    let mut b: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is NUL-terminated and `b` is a valid out-pointer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &mut b,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat_from(&b))
}

fn stat_from(b: &libc::statx) -> Stat {
    Stat {
        dev: libc::makedev(b.stx_dev_major, b.stx_dev_minor),
        ino: b.stx_ino,
        size: b.stx_size,
        mtime: b.stx_mtime.tv_sec,
        regular: u32::from(b.stx_mode) & libc::S_IFMT == libc::S_IFREG,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    fn both() -> Vec<BatchIo> {
        let mut v = vec![BatchIo::new(IoMode::Pread, "test").unwrap()];
        if let Ok(u) = BatchIo::new(IoMode::IoUring, "test") {
            v.push(u);
        }
        v
    }

    #[test]
    fn reads_and_stats_agree_across_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..300 {
            let p = dir.path().join(format!("{i}.log"));
            std::fs::write(&p, format!("file {i}\n").repeat(i + 1)).unwrap();
            files.push((std::fs::File::open(&p).unwrap(), p));
        }
        let paths: Vec<CString> = files
            .iter()
            .map(|(_, p)| CString::new(p.as_os_str().as_bytes()).unwrap())
            .collect();
        let mut seen = Vec::new();
        for mut io in both() {
            let mut bufs = vec![vec![0u8; 64]; files.len()];
            let mut reqs: Vec<ReadReq> = files
                .iter()
                .zip(bufs.iter_mut())
                .map(|((f, _), b)| ReadReq {
                    fd: f.as_raw_fd(),
                    offset: 2,
                    buf: b,
                })
                .collect();
            let mut out = Vec::new();
            io.read_batch(&mut reqs, &mut out);
            let reads: Vec<Vec<u8>> = out
                .iter()
                .zip(&bufs)
                .map(|(r, b)| b[..*r.as_ref().unwrap()].to_vec())
                .collect();
            let mut stats = Vec::new();
            io.stat_batch(&paths, &mut stats);
            let sizes: Vec<u64> = stats.iter().map(|s| s.as_ref().unwrap().size).collect();
            seen.push((reads, sizes));
        }
        assert_eq!(seen[0].0[0], b"le 0\n");
        assert_eq!(seen[0].1[3], 4 * 7);
        for other in &seen[1..] {
            assert_eq!(other, &seen[0]);
        }
    }

    #[test]
    fn errors_are_per_request() {
        for mut io in both() {
            let mut buf = [0u8; 8];
            let mut reqs = [ReadReq {
                fd: -1,
                offset: 0,
                buf: &mut buf,
            }];
            let mut out = Vec::new();
            io.read_batch(&mut reqs, &mut out);
            assert!(out[0].is_err());
            // One path (plain statx) and a batch large enough for io_uring, one path missing.
            for n in [1, SMALL_STAT_BATCH] {
                let mut paths = vec![CString::new("/").unwrap(); n - 1];
                paths.push(CString::new("/no/such/file").unwrap());
                let mut stats = Vec::new();
                io.stat_batch(&paths, &mut stats);
                assert!(stats[..n - 1].iter().all(|s| s.is_ok()));
                assert_eq!(
                    stats[n - 1].as_ref().unwrap_err().kind(),
                    io::ErrorKind::NotFound
                );
            }
        }
    }
}
