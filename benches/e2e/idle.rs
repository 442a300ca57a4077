//! Idle modes of the end-to-end bench (`E2E_IDLE`): what ringtail costs on a node whose files
//! are mostly quiet, the state it spends its life in.
//!
//! Each run ships the generated tree first (every line, to the Loki receiver), waits
//! [`SETTLE`], then measures a window of `E2E_SECS` (default 30 s here) in one of three modes:
//!
//! - `quiet`: nothing is written;
//! - `trickle`: `E2E_TRICKLE` files (default 20) get one line a second each, at phases spread
//!   over the second (a real node's writers are not in step, which is the hard case for
//!   batching);
//! - `new`: a new pod directory with a new `0.log` and one line in it is created every second.
//!
//! Figures, over the window: ringtail's CPU as a % of one core (the sum of its threads'
//! `schedstat` run time, in ns), wakeups a second (voluntary and involuntary context switches of
//! all its threads), syscalls a second (`perf stat -e raw_syscalls:sys_enter`, where perf can
//! trace; `n/a` otherwise), VmRSS at the end, pushes a second at the receiver, and for the lines
//! written, their latency from the write that returned to the receiver reading the push (p50,
//! p99, max).

use super::*;

/// Time between the last line of the tree arriving and the window's start: late work of the
/// catch-up (positions written, buffers freed) is not idle cost.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Quiet,
    Trickle,
    New,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "quiet" => Some(Mode::Quiet),
            "trickle" => Some(Mode::Trickle),
            "new" => Some(Mode::New),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Quiet => "quiet",
            Mode::Trickle => "trickle",
            Mode::New => "new",
        }
    }
}

pub struct IdleResult {
    pub cpu_pct: f64,
    pub wakeups_s: f64,
    pub syscalls_s: Option<f64>,
    pub rss_mib: f64,
    pub pushes_s: f64,
    pub lines: u64,
    pub lost: u64,
    pub dups: u64,
    /// Each window line's latency in µs.
    pub latencies: Vec<u32>,
    /// Each thread's share of a core over the window, busiest first (those at 0.05 % or more).
    pub threads: Vec<(String, f64)>,
    pub ok: bool,
}

/// Each thread's CPU over the window as % of a core, from two [`thread_cpu`] readings.
fn thread_shares(
    before: &[(String, f64)],
    after: &[(String, f64)],
    secs: f64,
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (i, (name, cpu)) in after.iter().enumerate() {
        let was = before
            .get(i)
            .filter(|(n, _)| n == name)
            .map_or(0.0, |(_, c)| *c);
        let pct = 100.0 * (cpu - was) / secs;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, p)) => *p += pct,
            None => out.push((name.clone(), pct)),
        }
    }
    out.retain(|(_, p)| *p >= 0.05);
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// CPU ns and context switches of each of a process's threads, by thread id.
fn task_counters(pid: u32) -> std::collections::HashMap<String, (u64, u64)> {
    let mut per = std::collections::HashMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return per;
    };
    for t in tasks.flatten() {
        let ns = fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let cs = fs::read_to_string(t.path().join("status"))
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .unwrap_or(0);
        per.insert(t.file_name().to_string_lossy().into_owned(), (ns, cs));
    }
    per
}

/// CPU ns and context switches between two [`task_counters`] snapshots, thread by thread (a
/// thread that exited in between, such as a metrics connection's, is not counted; one that
/// started counts in full).
fn counters_between(
    before: &std::collections::HashMap<String, (u64, u64)>,
    after: &std::collections::HashMap<String, (u64, u64)>,
) -> (u64, u64) {
    after.iter().fold((0, 0), |(ns, cs), (tid, &(n1, c1))| {
        let (n0, c0) = before.get(tid).copied().unwrap_or((0, 0));
        (ns + n1.saturating_sub(n0), cs + c1.saturating_sub(c0))
    })
}

/// Starts `perf stat` counting the syscalls of `pid` for `secs`; None where perf cannot.
fn perf_syscalls(pid: u32, secs: u64) -> Option<Child> {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
        .arg(pid.to_string())
        .args(["--", "sleep"])
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

fn perf_count(child: Option<Child>) -> Option<f64> {
    let out = child?.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))?;
    line.split(',').next()?.trim().parse().ok()
}

/// One CRI line (with a sequence number) appended to `path`, creating it if need be; marks when
/// the write returned.
fn write_line(path: &Path, gen: &mut Gen, w: &Written) {
    let mut buf = Vec::with_capacity(512);
    gen.ts_ns = ringtail::timefmt::now_ns();
    gen.cri_line(&mut buf);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file");
    f.write_all(&buf).expect("append to log file");
    w.marks.lock().unwrap().push((gen.seq, Instant::now()));
}

/// The window's writes, until `secs` have passed; returns the lines written.
/// Puts the tree back as it was generated: the trickling files cut back to their length, the new
/// pods removed (the next run ships the same lines, with the same sequence numbers).
fn restore(tree: &Tree, lens: &[u64]) {
    for (path, &len) in tree.files.iter().zip(lens) {
        if fs::metadata(path).is_ok_and(|m| m.len() != len) {
            fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len))
                .expect("cut a trickled file back");
        }
    }
    for dir in fs::read_dir(&tree.root).expect("read the tree").flatten() {
        if dir.file_name().to_string_lossy().contains("-new_") {
            fs::remove_dir_all(dir.path()).expect("remove a new pod");
        }
    }
}

fn write_window(mode: Mode, tree: &Tree, s: &Settings, w: &Written) -> u64 {
    let mut gen = Gen::new(s.seed ^ 0x1d1e, ringtail::timefmt::now_ns(), tree.lines);
    let t0 = Instant::now();
    match mode {
        Mode::Quiet => thread::sleep(s.idle_secs),
        Mode::Trickle => {
            let n = s.trickle.min(tree.files.len());
            // File i writes at i/n of each second, shuffled so neighbours in the tree (one
            // pod's two containers) are not also neighbours in time.
            let mut order: Vec<usize> = (0..n).collect();
            fastrand::Rng::with_seed(s.seed).shuffle(&mut order);
            let mut k = 0u64;
            loop {
                let at = Duration::from_secs_f64(k as f64 / n as f64);
                if at >= s.idle_secs {
                    break;
                }
                thread::sleep(at.saturating_sub(t0.elapsed()));
                let file = &tree.files[order[(k % n as u64) as usize]];
                write_line(file, &mut gen, w);
                k += 1;
            }
        }
        Mode::New => {
            let mut i = 0usize;
            loop {
                let at = Duration::from_secs(i as u64);
                if at >= s.idle_secs {
                    break;
                }
                thread::sleep(at.saturating_sub(t0.elapsed()));
                let (ns, pod, uid, container) = gen::file_names(tree.files.len() + 2 * i);
                let dir = tree
                    .root
                    .join(format!("{ns}_{pod}-new_{uid}"))
                    .join(&container);
                fs::create_dir_all(&dir).expect("create new pod dir");
                write_line(&dir.join("0.log"), &mut gen, w);
                i += 1;
            }
        }
    }
    gen.seq - tree.lines
}

pub fn idle_once(bin: &Path, tree: &Tree, work: &Path, mode: Mode, s: &Settings) -> IdleResult {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).expect("create run dir");
    let lens: Vec<u64> = tree
        .files
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .collect();
    let written = Arc::new(Written::default());
    // Room for every window line: at most one per trickling file, or one new file, a second.
    let window_lines = (s.idle_secs.as_secs() + 1) * s.trickle.max(1) as u64;
    let receiver = Receiver::start(
        tree.lines,
        tree.lines + window_lines,
        Duration::ZERO,
        Some(written.clone()),
    );
    let config = work.join("ringtail.yaml");
    let metrics_port = free_port();
    let yaml = config_yaml(
        tree,
        &work.join("data"),
        &receiver.url(),
        metrics_port,
        s.threads[0],
        &s.io[0],
    );
    fs::write(&config, yaml).expect("write config");
    let mut cmd = Command::new(bin);
    cmd.env_remove("KUBECONFIG");
    let mut child = spawn_run(cmd, &config, work);
    let pid = child.id();
    let caught_up = receiver.wait_all(&mut child, s.timeout).is_some();
    thread::sleep(SETTLE);
    let requests0 = receiver.shared.counts.lock().unwrap().requests;
    let counters0 = task_counters(pid);
    let threads0 = thread_cpu(pid);
    let t0 = Instant::now();
    let perf = perf_syscalls(pid, s.idle_secs.as_secs());
    let lines = write_window(mode, tree, s, &written);
    let secs = t0.elapsed().as_secs_f64();
    let (ns, cs) = counters_between(&counters0, &task_counters(pid));
    let threads = thread_shares(&threads0, &thread_cpu(pid), secs);
    let rss_mib = status_mib(pid, "VmRSS").unwrap_or(f64::NAN);
    let syscalls = perf_count(perf);
    receiver.expect(tree.lines + lines);
    let all = receiver
        .wait_all(&mut child, Duration::from_secs(10))
        .is_some();
    let exit = stop_child(&mut child);
    restore(tree, &lens);
    let c = receiver.shared.counts.lock().unwrap();
    let lost = (tree.lines + lines).saturating_sub(c.unique);
    let ok = caught_up && all && lost == 0 && exit.is_some_and(|e| e.success());
    if !ok {
        let log = fs::read_to_string(work.join("stderr.log")).unwrap_or_default();
        eprintln!(
            "e2e: idle {}: caught up {caught_up}, window lines all arrived {all}, {lost} lost, \
             exit {exit:?}; stderr:\n{log}",
            mode.name()
        );
    }
    let (pushes, dups) = (c.requests - requests0, c.dups);
    drop(c);
    let latencies = std::mem::take(&mut *receiver.shared.latencies.lock().unwrap());
    IdleResult {
        cpu_pct: 100.0 * ns as f64 / 1e9 / secs,
        wakeups_s: cs as f64 / secs,
        syscalls_s: syscalls.map(|n| n / secs),
        rss_mib,
        pushes_s: pushes as f64 / secs,
        lines,
        lost,
        dups,
        latencies,
        threads,
        ok,
    }
}

/// One mode's figures over its runs: median [min..max].
pub fn idle_summary(title: &str, results: &[IdleResult]) -> String {
    let col = |f: fn(&IdleResult) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let sys = if results.iter().all(|r| r.syscalls_s.is_some()) {
        spread(&col(|r| r.syscalls_s.unwrap_or(f64::NAN)))
    } else {
        "n/a (perf cannot trace syscalls here)".to_string()
    };
    let mut out = format!(
        "{title} ({} runs, median [min..max])\n    \
         CPU % of a core {}\n    \
         wakeups/s       {} (context switches, all threads)\n    \
         syscalls/s      {}\n    \
         VmRSS MiB       {}\n    \
         pushes/s        {}\n    \
         lines written   {}, lost {}, duplicates {}\n    \
         threads, % of a core (median) {}",
        results.len(),
        spread(&col(|r| r.cpu_pct)),
        spread(&col(|r| r.wakeups_s)),
        sys,
        spread(&col(|r| r.rss_mib)),
        spread(&col(|r| r.pushes_s)),
        results.iter().map(|r| r.lines).sum::<u64>(),
        results.iter().map(|r| r.lost).sum::<u64>(),
        results.iter().map(|r| r.dups).sum::<u64>(),
        thread_summary(results),
    );
    if results.iter().any(|r| !r.latencies.is_empty()) {
        let mut sorted: Vec<Vec<u32>> = results.iter().map(|r| r.latencies.clone()).collect();
        for v in &mut sorted {
            v.sort_unstable();
        }
        let row = |p: f64| {
            spread(
                &sorted
                    .iter()
                    .map(|v| percentile_ms(v, p))
                    .collect::<Vec<_>>(),
            )
        };
        out.push_str(&format!(
            "\n    latency ms      p50 {}  p99 {}  max {} (write to receiver)",
            row(0.5),
            row(0.99),
            row(1.0)
        ));
    }
    out
}

/// Each thread's median share over the runs, busiest first.
fn thread_summary(results: &[IdleResult]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in results.iter().flat_map(|r| &r.threads) {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let mut rows: Vec<(&str, f64)> = names
        .into_iter()
        .map(|n| {
            let v: Vec<f64> = results
                .iter()
                .map(|r| {
                    r.threads
                        .iter()
                        .find(|(t, _)| t == n)
                        .map_or(0.0, |(_, p)| *p)
                })
                .collect();
            (n, median(&v))
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows.iter()
        .map(|(n, p)| format!("{n} {p:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}
