//! Journal throughput: generated journal files (written by `systemd-journal-remote`, as the
//! tests write them) read by the journal source's [`Reader`] into chunks, encoded as Loki push
//! requests and snappy-compressed in batches of 1 MiB — what the journal thread and the writer's
//! batcher do, on one thread in this process, without HTTP. For comparison: the same entries
//! and fields read with the `systemd` crate alone, once with five `get_data` calls per entry and
//! once with one `enumerate_data` pass (what the source does), and the reader without the
//! encoding.
//!
//! Run: `cargo bench --bench journal`. Settings come from the environment:
//!
//! | variable          | default  | meaning                                                  |
//! |-------------------|----------|----------------------------------------------------------|
//! | `JOURNAL_ENTRIES` | 500000   | entries generated (about 20 fields each, like journald's) |
//! | `JOURNAL_FILES`   | 5        | journal files they are spread over, in time order         |
//! | `JOURNAL_RUNS`    | 3        | runs per measurement (median, min and max are printed)    |
//! | `JOURNAL_DIR`     | temp dir | where the files are generated                             |
//!
//! Without `--bench` (`cargo test --benches`), it runs a small smoke configuration instead.
//!
//! Figures are entries/s of wall time and of the thread's CPU time (one thread, so per core).
//! Exits non-zero when an entry is missing.

#[path = "common/stats.rs"]
mod stats;
use stats::spread;
#[path = "../tests/support/journal.rs"]
#[allow(dead_code)]
mod journal_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use journal_support::{realtime_now_us, JournalDir, JournalEntry};
use ringtail::entry::Chunk;
use ringtail::sink::encode::Encoder;
use ringtail::sources::journal::{Fill, Reader};
use systemd::journal::{Journal, OpenDirectoryOptions};

const UNITS: [(&str, &str, &str); 12] = [
    ("kubelet.service", "kubelet", "/usr/local/bin/kubelet"),
    (
        "containerd.service",
        "containerd",
        "/usr/local/bin/containerd",
    ),
    (
        "rke2-server.service",
        "rke2",
        "/var/lib/rancher/rke2/bin/rke2",
    ),
    ("sshd.service", "sshd", "/usr/sbin/sshd"),
    (
        "systemd-journald.service",
        "systemd-journald",
        "/lib/systemd/systemd-journald",
    ),
    ("cron.service", "CRON", "/usr/sbin/cron"),
    (
        "systemd-logind.service",
        "systemd-logind",
        "/lib/systemd/systemd-logind",
    ),
    ("chronyd.service", "chronyd", "/usr/sbin/chronyd"),
    ("dbus.service", "dbus-daemon", "/usr/bin/dbus-daemon"),
    ("init.scope", "systemd", "/lib/systemd/systemd"),
    (
        "networkd-dispatcher.service",
        "networkd-dispatcher",
        "/usr/bin/python3",
    ),
    ("session-4.scope", "sudo", "/usr/bin/sudo"),
];

const WORDS: [&str; 24] = [
    "pod",
    "sandbox",
    "container",
    "volume",
    "mount",
    "network",
    "probe",
    "failed",
    "started",
    "stopped",
    "image",
    "pulled",
    "syncing",
    "status",
    "node",
    "lease",
    "renewed",
    "error",
    "context",
    "deadline",
    "exceeded",
    "cgroup",
    "oom",
    "restarting",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("journal bench: cannot parse {name}={v:?}");
            std::process::exit(2)
        }),
        _ => default,
    }
}

/// `n` journald-like entries from `t0`, one every 10 µs.
fn entries(rng: &mut fastrand::Rng, first: usize, n: usize, t0: u64) -> Vec<JournalEntry> {
    let mut out = Vec::with_capacity(n);
    for i in first..first + n {
        let (unit, ident, exe) = UNITS[(rng.f64().powi(2) * UNITS.len() as f64) as usize];
        let pid = 1000 + (unit.len() * 37) % 5000;
        let priority = match rng.u8(0..100) {
            0..=1 => 3,
            2..=6 => 4,
            7..=9 => 5,
            10..=89 => 6,
            _ => 7,
        };
        let mut msg = format!("I{i:09} {ident}[{pid}]:");
        let words = rng.usize(4..40);
        for _ in 0..words {
            msg.push(' ');
            msg.push_str(WORDS[rng.usize(..WORDS.len())]);
        }
        let ts = t0 + i as u64 * 10;
        let mut e = JournalEntry::new(ts)
            .field("_TRANSPORT", "stdout")
            .field("_HOSTNAME", "node-a")
            .field("_UID", "0")
            .field("_GID", "0")
            .field("_COMM", ident)
            .field("_EXE", exe)
            .field(
                "_CMDLINE",
                format!("{exe} --config=/etc/{ident}/config.yaml"),
            )
            .field("_CAP_EFFECTIVE", "1ffffffffff")
            .field("_SYSTEMD_CGROUP", format!("/system.slice/{unit}"))
            .field("_SYSTEMD_SLICE", "system.slice")
            .field(
                "_SYSTEMD_INVOCATION_ID",
                format!("{:032x}", unit.len() as u128 * 0x9e37_79b9_7f4a_7c15),
            )
            .field("_STREAM_ID", format!("{:032x}", unit.len() as u128 * 31))
            .field("SYSLOG_FACILITY", "3")
            .field("SYSLOG_IDENTIFIER", ident)
            .field("_PID", pid.to_string())
            .field("_SYSTEMD_UNIT", unit)
            .field("PRIORITY", priority.to_string())
            .field("MESSAGE", &msg);
        if i % 4 == 0 {
            e = e
                .field("CODE_FILE", "src/core/job.c")
                .field("CODE_LINE", (i % 900).to_string())
                .field("CODE_FUNC", "job_emit_done_message");
        }
        out.push(e);
    }
    out
}

struct Generated {
    dir: PathBuf,
    entries: u64,
    message_bytes: u64,
}

fn generate(dir: &Path, total: usize, files: usize) -> Generated {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut j = JournalDir::new(dir);
    // Recent enough for any max_age: the newest entry is a minute old.
    let t0 = realtime_now_us() - 60_000_000 - total as u64 * 10;
    let per = total.div_ceil(files.max(1));
    let mut message_bytes = 0u64;
    let mut first = 0;
    let mut f = 0;
    while first < total {
        let n = per.min(total - first);
        let batch = entries(&mut rng, first, n, t0);
        message_bytes += batch
            .iter()
            .map(|e| e.get("MESSAGE").map_or(0, |m| m.len() as u64))
            .sum::<u64>();
        j.write(&format!("system-{f:02}"), &batch);
        first += n;
        f += 1;
    }
    Generated {
        dir: dir.to_path_buf(),
        entries: total as u64,
        message_bytes,
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills one plain struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Run {
    entries: u64,
    wall: Duration,
    cpu: Duration,
    extra: String,
}

impl Run {
    fn per_s(&self) -> f64 {
        self.entries as f64 / self.wall.as_secs_f64()
    }
    fn per_cpu_s(&self) -> f64 {
        self.entries as f64 / self.cpu.as_secs_f64()
    }
}

/// The generated journal, opened the way both "crate alone" runs read it.
fn open_at_head(g: &Generated) -> Journal {
    let mut j = OpenDirectoryOptions::default()
        .open_directory(g.dir.as_os_str().to_str().expect("utf-8 path"))
        .expect("open journal");
    j.set_data_threshold(256 << 10).expect("threshold");
    j.seek_head().expect("seek");
    j
}

/// The `systemd` crate alone: the same fields as the source, summed so nothing is optimised
/// away.
fn crate_alone(g: &Generated) -> Run {
    let (t, c) = (Instant::now(), thread_cpu());
    let mut j = open_at_head(g);
    let mut n = 0u64;
    let mut sum = 0u64;
    while j.next().expect("next") > 0 {
        sum = sum.wrapping_add(j.timestamp_usec().expect("ts"));
        for f in [
            c"PRIORITY",
            c"_SYSTEMD_UNIT",
            c"SYSLOG_IDENTIFIER",
            c"_PID",
            c"MESSAGE",
        ] {
            if let Ok(Some(v)) = j.get_data(f) {
                sum = sum.wrapping_add(v.data().len() as u64);
            }
        }
        n += 1;
    }
    std::hint::black_box(sum);
    Run {
        entries: n,
        wall: t.elapsed(),
        cpu: thread_cpu() - c,
        extra: String::new(),
    }
}

/// The `systemd` crate alone, enumerating every field once and picking the same five.
fn crate_enumerate(g: &Generated) -> Run {
    let (t, c) = (Instant::now(), thread_cpu());
    let mut j = open_at_head(g);
    let mut n = 0u64;
    let mut sum = 0u64;
    while j.next().expect("next") > 0 {
        sum = sum.wrapping_add(j.timestamp_usec().expect("ts"));
        j.restart_data();
        while let Ok(Some(f)) = j.enumerate_data() {
            let d = f.data();
            let hit = d.starts_with(b"MESSAGE=")
                || d.starts_with(b"PRIORITY=")
                || d.starts_with(b"_SYSTEMD_UNIT=")
                || d.starts_with(b"SYSLOG_IDENTIFIER=")
                || d.starts_with(b"_PID=");
            if hit {
                sum = sum.wrapping_add(d.len() as u64);
            }
        }
        n += 1;
    }
    std::hint::black_box(sum);
    Run {
        entries: n,
        wall: t.elapsed(),
        cpu: thread_cpu() - c,
        extra: String::new(),
    }
}

/// The journal source's reader into chunks; with `encode`, batches of 1 MiB are encoded and
/// snappy-compressed as the writer does.
fn reader(g: &Generated, encode: bool) -> Run {
    let (t, c) = (Instant::now(), thread_cpu());
    let mut r = Reader::open(std::slice::from_ref(&g.dir), "node-a", 256 << 10).expect("open");
    r.start(None, Duration::from_secs(10 * 365 * 86400));
    let mut encoder = Encoder::default();
    let mut snappy = snap::raw::Encoder::new();
    let mut encoded = Vec::new();
    let mut compressed = Vec::new();
    let mut pool: Vec<Chunk> = Vec::new();
    let mut batch: Vec<Chunk> = Vec::new();
    let mut batch_bytes = 0usize;
    let (mut n, mut chunks, mut batches, mut wire) = (0u64, 0u64, 0u64, 0u64);
    let mut flush = |batch: &mut Vec<Chunk>, pool: &mut Vec<Chunk>| {
        if encode && !batch.is_empty() {
            encoder.encode(batch, &mut encoded);
            compressed.resize(snap::raw::max_compress_len(encoded.len()), 0);
            wire += snappy.compress(&encoded, &mut compressed).expect("snappy") as u64;
            batches += 1;
        }
        pool.append(batch);
    };
    loop {
        let mut chunk = match pool.pop() {
            Some(mut c) => {
                c.reset(r.recent_labels());
                c
            }
            None => Chunk::new(r.recent_labels()),
        };
        let fill = r.fill(&mut chunk).expect("fill");
        n += chunk.entries.len() as u64;
        if chunk.entries.is_empty() {
            pool.push(chunk);
        } else {
            chunks += 1;
            if batch_bytes + chunk.size() > 1 << 20 {
                flush(&mut batch, &mut pool);
                batch_bytes = 0;
            }
            batch_bytes += chunk.size();
            batch.push(chunk);
        }
        if fill == Fill::End {
            break;
        }
    }
    flush(&mut batch, &mut pool);
    let extra = if encode {
        format!(
            ", {chunks} chunks, {batches} batches, {:.1} MiB snappy",
            wire as f64 / (1 << 20) as f64
        )
    } else {
        format!(", {chunks} chunks")
    };
    Run {
        entries: n,
        wall: t.elapsed(),
        cpu: thread_cpu() - c,
        extra,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (entries_default, runs_default) = if bench { (500_000, 3) } else { (5_000, 1) };
    let total: usize = env_or("JOURNAL_ENTRIES", entries_default);
    let files: usize = env_or("JOURNAL_FILES", 5);
    let runs: usize = env_or::<usize>("JOURNAL_RUNS", runs_default).max(1);
    let tmp = match std::env::var_os("JOURNAL_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).expect("create JOURNAL_DIR");
            tempfile::Builder::new()
                .prefix("ringtail-journal-")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new()
            .prefix("ringtail-journal-")
            .tempdir(),
    }
    .expect("temp dir");

    let t = Instant::now();
    let g = generate(&tmp.path().join("journal"), total, files);
    let disk: u64 = std::fs::read_dir(&g.dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "journal: {} entries ({:.0} B of MESSAGE on average) in {files} files, {:.0} MiB on disk, \
         written by systemd-journal-remote in {:.1} s under {}",
        g.entries,
        g.message_bytes as f64 / g.entries as f64,
        disk as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
        g.dir.display()
    );

    type Measure = fn(&Generated) -> Run;
    let measures: [(&str, Measure); 4] = [
        ("systemd crate alone (next + 5 get_data)", crate_alone),
        (
            "systemd crate alone (next + enumerate_data)",
            crate_enumerate,
        ),
        ("ringtail reader -> chunks", |g| reader(g, false)),
        ("ringtail reader -> chunks -> encode + snappy", |g| {
            reader(g, true)
        }),
    ];
    let mut failed = false;
    let mut summary = Vec::new();
    for (name, f) in measures {
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        for i in 0..runs {
            let r = f(&g);
            println!(
                "  {name} run {}/{runs}: {} entries in {:.2} s (CPU {:.2} s): {:.0} entries/s, \
                 {:.0} per CPU-second{}",
                i + 1,
                r.entries,
                r.wall.as_secs_f64(),
                r.cpu.as_secs_f64(),
                r.per_s(),
                r.per_cpu_s(),
                r.extra
            );
            if r.entries != g.entries {
                eprintln!(
                    "journal bench: {name} read {} entries of {}",
                    r.entries, g.entries
                );
                failed = true;
            }
            wall.push(r.per_s());
            cpu.push(r.per_cpu_s());
        }
        summary.push(format!(
            "{name}\n    entries/s            {}\n    entries/CPU-second   {}",
            spread(&wall),
            spread(&cpu)
        ));
    }
    println!("\njournal summary ({runs} runs, median [min..max], one thread):");
    for s in &summary {
        println!("  {s}");
    }
    if failed {
        eprintln!("journal bench: FAILED: entries were missing");
        std::process::exit(1);
    }
}
