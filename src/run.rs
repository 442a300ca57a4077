//! `ringtail run`: builds the pipeline back to front (positions, writer, tailers, discovery),
//! waits for SIGTERM or SIGINT, then stops it front to back within the deadline.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::metadata::{NoMetadata, PodMetadata};
use crate::positions::{store, Positions};
use crate::process::{plain, Processor};
use crate::ring::{ring, RingTx};
use crate::shutdown::Stop;
use crate::sink::loki::LokiClient;
use crate::sink::{self, Output, Progress};
use crate::sources::files::discover::{
    rke2_labels, Catalog, Discovery, FixedFile, PodTree, POLL_EVERY,
};
use crate::sources::files::io::BatchIo;
use crate::sources::files::schedule::Tailer;
use crate::sources::files::watch::Watcher;
use crate::telemetry::metrics::METRICS;
use crate::telemetry::server::{self, Health};
use crate::telemetry::tap::Filter;

/// Chunks the ring holds: with reads of at most 128 KiB, at most 2 MiB waiting for the writer,
/// about two batches. A deeper ring measured no faster on the e2e bench and cost ~10 MiB of RSS
/// with 2,000 files.
const RING_CHUNKS: usize = 16;
/// Tailers started by `tail.threads: 0`. Each holds its read buffers (4 MiB); past a few, a
/// node's log volume is bound by the writer, not by reading.
const MAX_AUTO_TAILERS: usize = 4;
/// How often acked positions are written.
const SAVE_EVERY: Duration = Duration::from_secs(1);

pub fn run(cfg: Config) -> Result<(), String> {
    run_with(cfg, None)
}

/// `ringtail tap --config FILE`: the pipeline of `cfg` in the foreground, printing what it would
/// send and shipping nothing. It must not disturb a ringtail running on the same node: its
/// positions go to a fresh directory (removed at exit), it starts at the end of every file and of
/// the journal, its metrics server takes any free loopback port, and it does not campaign for
/// the events Lease.
pub fn tap(mut cfg: Config, filter: Filter) -> Result<(), String> {
    let dir = fresh_temp_dir()?;
    cfg.data_dir = dir.clone();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.logs.pods.read_from = crate::config::ReadFrom::End;
    cfg.logs.journal.max_age = crate::config::Dur(Duration::ZERO);
    cfg.logs.events.enabled = false;
    let r = run_with(cfg, Some(Output::Tap(filter)));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// A new, empty, private directory under `$TMPDIR`: never one a killed tap left behind (its
/// positions would make files start where that run stopped).
fn fresh_temp_dir() -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let dir = base.join(format!("ringtail-tap-{:016x}", fastrand::u64(..)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "cannot create a directory in {} for the tap's positions: {}; set TMPDIR to a \
         writable directory",
        base.display(),
        last.map_or_else(String::new, |e| e.to_string())
    ))
}

fn run_with(cfg: Config, output: Option<Output>) -> Result<(), String> {
    exit_on_panic();
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        format!(
            "data_dir: cannot create {}: {e}; mount a writable hostPath there",
            cfg.data_dir.display()
        )
    })?;
    let loaded = store::load(&cfg.data_dir).map_err(|e| {
        format!(
            "data_dir: cannot read positions in {}: {e}; check its permissions",
            cfg.data_dir.display()
        )
    })?;
    if let Some(aside) = &loaded.set_aside {
        METRICS.positions_errors.inc();
        log::error!(
            "the positions file was corrupt; it was moved to {} and ringtail starts fresh \
             (files are read again per logs.pods.read_from)",
            aside.display()
        );
    }
    if let Some(why) = &loaded.changes_cut {
        METRICS.positions_errors.inc();
        log::warn!(
            "positions: {why}; the files they were for resume from their previous position (some \
             lines are sent again, none lost)"
        );
    }
    let grace = cfg.loki.timeout.0.max(Duration::from_secs(10)) - Duration::from_secs(1);
    let stop = Arc::new(Stop::default());
    watch_signals(stop.clone(), grace)?;

    let output = match output {
        Some(o) => o,
        None if cfg.loki.url.is_empty() => {
            log::info!("loki.url is empty: writing entries to stdout as JSON lines");
            Output::Stdout
        }
        None => Output::Loki(LokiClient::new(&cfg.loki)?),
    };
    let progress = Arc::new(Progress::default());
    let health = Arc::new(Health {
        ready: Default::default(),
        progress: progress.clone(),
        stall_secs: cfg.server.stall_timeout.0.as_secs(),
    });
    server::start(&cfg.server.listen, health.clone()).map_err(|e| {
        format!(
            "server.listen: cannot listen on {}: {e}; choose a free address:port",
            cfg.server.listen
        )
    })?;

    let (ring_tx, ring_rx) = ring(RING_CHUNKS);
    let mut positions = Positions::new(cfg.data_dir.clone(), &loaded, SAVE_EVERY);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    if cfg.logs.journal.enabled {
        let (journal, node, cursor) = (
            cfg.logs.journal.clone(),
            cfg.node_name.clone(),
            loaded.journal_cursor.clone(),
        );
        let (tx, stop, max_line) = (ring_tx.clone(), stop.clone(), cfg.loki.max_line_size.0);
        threads.push(spawn("journal", None, move || {
            crate::sources::journal::run(&journal, &node, cursor, max_line as usize, tx, &stop)
        })?);
    }
    let kube = if cfg.logs.pods.enabled || cfg.logs.events.enabled {
        let (acks_tx, acks_rx) = tokio::sync::watch::channel(None);
        positions.on_events_ack(Box::new(move |p| {
            acks_tx.send_replace(Some(p.clone()));
        }));
        Some(crate::k8s::start(
            &cfg,
            ring_tx.clone(),
            acks_rx,
            stop.clone(),
        )?)
    } else {
        None
    };
    let meta: Arc<dyn PodMetadata> = match &kube {
        Some(k) if cfg.logs.pods.enabled => {
            // Files found at start get their labels at once when the API answers quickly.
            k.pods.wait_synced(cfg.logs.pods.metadata.wait.0);
            k.pods.clone()
        }
        _ => Arc::new(NoMetadata),
    };
    let catalogs = catalogs(&cfg, meta);
    if !catalogs.is_empty() {
        let committed = positions.committed();
        let mut discovery = start_files(
            &cfg,
            catalogs,
            &ring_tx,
            &stop,
            loaded,
            committed,
            &mut threads,
        )?;
        // Rotated files compressed while ringtail was down stand in for the files they hold.
        let recoveries = discovery.take_recoveries();
        positions.carry_over(&recoveries);
        if discovery.started() {
            // Positions of files that are not in the tree any more: their files are gone.
            positions.retain(discovery.known_keys());
        }
        if !recoveries.is_empty() {
            let proc = Processor::new(cfg.logs.pods.json.line, cfg.loki.max_line_size.0 as usize);
            let (tx, stop) = (ring_tx.clone(), stop.clone());
            threads.push(spawn("recover", None, move || {
                crate::sources::files::recover::run(recoveries, proc, tx, &stop)
            })?);
        }
        threads.push(spawn("discovery", None, {
            let stop = stop.clone();
            move || discovery.run(&stop)
        })?);
    }
    let writer = sink::start(
        ring_rx,
        output,
        positions,
        cfg.loki.clone(),
        tailers(&cfg),
        progress,
        stop.clone(),
    )
    .map_err(|e| format!("cannot start the writer threads: {e}"))?;
    health.ready.store(true, Ordering::Relaxed);
    log::info!(
        "ringtail {} running on node {}",
        env!("CARGO_PKG_VERSION"),
        cfg.node_name
    );

    stop.wait();
    log::info!("stopping: flushing what was read and committing positions");
    drop(ring_tx);
    for t in threads {
        let _ = t.join();
    }
    for t in writer {
        let _ = t.join();
    }
    if let Some(k) = kube {
        k.finish(&stop);
    }
    log::info!("stopped");
    Ok(())
}

/// The file sources the config enables: pod logs, and RKE2's two daemon logs.
fn catalogs(cfg: &Config, meta: Arc<dyn PodMetadata>) -> Vec<Catalog> {
    let mut out = Vec::new();
    if cfg.logs.pods.enabled {
        out.push(Catalog::Pods(PodTree::new(
            cfg.logs.pods.path.clone(),
            cfg.node_name.clone(),
            meta,
            cfg.logs.pods.metadata.wait.0,
        )));
    }
    if cfg.logs.rke2.enabled {
        let rke2 = &cfg.logs.rke2;
        // Checked when the config was loaded; read again here, as the file may have changed.
        match plain::resolve_zone(&rke2.timezone, Path::new(plain::LOCALTIME)) {
            Ok(tz) => {
                let name = tz.iana_name().unwrap_or(if rke2.timezone.is_empty() {
                    plain::LOCALTIME
                } else {
                    &rke2.timezone
                });
                log::info!("kubelet.log's klog times are read in zone {name}");
                plain::set_node_zone(tz);
            }
            Err(e) => log::error!("logs.rke2.timezone: {e}; reading klog times as UTC"),
        }
        out.push(Catalog::Fixed(vec![
            FixedFile::new(
                rke2.kubelet_log.clone(),
                rke2_labels("kubelet", &cfg.node_name),
            ),
            FixedFile::new(
                rke2.containerd_log.clone(),
                rke2_labels("containerd", &cfg.node_name),
            ),
        ]));
    }
    out
}

/// Starts the tailer threads and runs discovery's start scans (so positions of files that are
/// gone can be dropped before the writer starts).
/// `tail.threads`, or one per core this process may use (its cpuset or its cgroup's CPU
/// quota, whichever is less), at most [`MAX_AUTO_TAILERS`]. The writer runs as many sealers:
/// encoding and compressing a batch costs about as much CPU per byte as reading and processing
/// it (BENCHMARKS.md), so the two stages scale together.
fn tailers(cfg: &Config) -> usize {
    match cfg.tail.threads {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_AUTO_TAILERS),
        n => n,
    }
}

fn start_files(
    cfg: &Config,
    catalogs: Vec<Catalog>,
    ring_tx: &RingTx,
    stop: &Arc<Stop>,
    loaded: store::Loaded,
    committed: Arc<crate::positions::Committed>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<Discovery, String> {
    let cpus = allowed_cpus();
    let n = tailers(cfg);
    let io_err = |e: std::io::Error| {
        format!("tail.io: io_uring was forced but is unavailable: {e}; use tail.io: auto")
    };
    let max_open = open_files_budget(cfg.tail.max_open_files);
    let mut controls = Vec::with_capacity(n);
    for i in 0..n {
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        controls.push(ctl_tx);
        let name = format!("tailer-{i}");
        let tailer = Tailer::new(
            name.clone(),
            BatchIo::new(cfg.tail.io, &name).map_err(io_err)?,
            Processor::new(cfg.logs.pods.json.line, cfg.loki.max_line_size.0 as usize),
            ctl_rx,
            ring_tx.clone(),
            (max_open / n).max(1),
        );
        let stop = stop.clone();
        let core = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
        threads.push(spawn(&name, core, move || tailer.run(&stop))?);
    }
    let mut discovery = Discovery::new(
        catalogs,
        cfg.logs.pods.read_from,
        loaded.files,
        loaded.saved_at,
        controls,
        BatchIo::new(cfg.tail.io, "discovery").map_err(io_err)?,
    )
    .with_committed(committed);
    if cfg.tail.inotify {
        match Watcher::new(cfg.tail.max_watches) {
            Ok(w) => discovery = discovery.with_watcher(w, cfg.tail.rescan.0),
            Err(e) => log::warn!(
                "inotify is unavailable ({e}); polling every log file instead, and listing the \
                 tree every {} ms. Raise fs.inotify.max_user_instances if it is used up (EMFILE), \
                 or set tail.inotify: false to say this is meant",
                POLL_EVERY.as_millis()
            ),
        }
    }
    if cfg.logs.pods.enabled && std::fs::read_dir(&cfg.logs.pods.path).is_err() {
        log::warn!(
            "logs.pods.path {} cannot be listed yet; waiting for it",
            cfg.logs.pods.path.display()
        );
    }
    // Two scans (see discover::START_SCANS), so that a rename racing the first cannot make a
    // file look new or gone.
    discovery.scan();
    discovery.scan();
    Ok(discovery)
}

fn spawn(
    name: &str,
    core: Option<usize>,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Some(core) = core {
                pin_to_core(core);
            }
            f()
        })
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

/// Raises the soft limit on open files to the hard one, and returns how many of them the
/// tailers may hold: `tail.max_open_files`, or less when the limit leaves no room for it plus a
/// reserve for sockets, rings and the positions file. containerd 2.0 no longer raises the
/// limit, so a container starts with a soft limit of 1,024.
fn open_files_budget(wanted: usize) -> usize {
    const RESERVE: u64 = 64;
    // SAFETY: getrlimit/setrlimit read and write one plain struct.
    let soft = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let room = soft.saturating_sub(RESERVE) as usize;
    if room < wanted {
        log::warn!(
            "tail.max_open_files is {wanted} but the open-file limit is {soft}; keeping at most \
             {room} files open (raise the container's nofile limit to keep more)"
        );
        return room.max(16);
    }
    wanted
}

/// The CPUs this process may run on (its cpuset), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; sched_getaffinity fills at most its size, and
    // CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to one core, so a tailer keeps its caches warm. A failure (a cpuset
/// that excludes the core) only costs that, so it is logged and ignored.
fn pin_to_core(core: usize) {
    // SAFETY: `cpu_set_t` is plain data; CPU_ZERO/CPU_SET write within it, and
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        log::debug!(
            "cannot pin to core {core}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A panic in any stage is a bug; a collector that silently stops one of its threads would
/// stop shipping without saying so. Log it and exit non-zero, so that the kubelet restarts the
/// pod and it resumes from the committed positions.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("internal error, exiting so the pod restarts: {info}");
        default(info);
        std::process::exit(101);
    }));
}

fn watch_signals(stop: Arc<Stop>, grace: Duration) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("received signal {sig}");
                stop.begin(grace);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}
