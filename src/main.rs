//! The `ringtail` command: `run`, `tap`, `check-config` and `version`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use ringtail::config::Config;
use ringtail::telemetry::tap::Filter;

#[derive(Parser)]
#[command(
    name = "ringtail",
    version,
    about = "Ships every log line of a Kubernetes node to Loki, at least once."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tail the node's logs and ship them until SIGTERM or SIGINT.
    Run {
        /// ringtail's YAML config, or the platform's config/dev.yaml with an `alloy:` block.
        #[arg(long, default_value = "/etc/ringtail/ringtail.yaml")]
        config: PathBuf,
    },
    /// Print what a running ringtail is sending, as JSON lines (the stdout sink's format):
    /// "are my logs collected?". With --config, run a pipeline in the foreground instead, which
    /// ships nothing and prints what it would send.
    Tap {
        /// The running ringtail's server.listen (from inside its pod: the default).
        #[arg(long, default_value = "127.0.0.1:9080")]
        addr: String,
        /// Run from this config in the foreground instead of connecting.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only this source: pods, rke2, journal or events.
        #[arg(long)]
        source: Option<String>,
        /// Only entries with this label value (repeatable; all must match), e.g.
        /// --match namespace=emojivoto.
        #[arg(long = "match", value_name = "LABEL=VALUE")]
        matches: Vec<String>,
    },
    /// Print the effective configuration, or the error (exit code 2).
    CheckConfig { file: PathBuf },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Version => {
            println!("ringtail {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                print!("{}", cfg.to_yaml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Tap {
            addr,
            config,
            source,
            matches,
        } => {
            let filter = match Filter::new(source.as_deref(), &matches) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match config {
                Some(path) => {
                    let cfg = match Config::load(&path) {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::from(2);
                        }
                    };
                    ringtail::telemetry::logger::init(cfg.log.level, cfg.log.format);
                    match ringtail::run::tap(cfg, filter) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            log::error!("{e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                None => match tap_remote(&addr, &filter) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                },
            }
        }
        Cmd::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            ringtail::telemetry::logger::init(cfg.log.level, cfg.log.format);
            match ringtail::run::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Streams `/tap` from a running ringtail to stdout until it closes (or stdout does).
fn tap_remote(addr: &str, filter: &Filter) -> Result<(), String> {
    let hint = "is ringtail running there? Inside its pod the default --addr works \
                (kubectl exec -n ringtail <pod> -- ringtail tap); from outside, kubectl \
                port-forward first";
    let mut conn = TcpStream::connect(addr)
        .map_err(|e| format!("cannot connect to ringtail at {addr}: {e}; {hint}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET /tap?{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        filter.to_query()
    )
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut r = BufReader::new(conn);
    let mut status = String::new();
    r.read_line(&mut status)
        .map_err(|e| format!("no answer from {addr}: {e}; {hint}"))?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 || line == "\r\n" {
            break;
        }
    }
    if !status.contains(" 200 ") {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut body);
        return Err(format!(
            "{addr} answered {}: {}",
            status.trim(),
            body.trim()
        ));
    }
    let stdout = std::io::stdout();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            // A keepalive: the moment to notice that whoever reads our stdout has gone (a
            // `kubectl exec` without -t leaves this process running after Ctrl-C), so that an
            // orphaned tap does not hold one of the server's few tap slots.
            Ok(_) if line == "\n" => {
                if stdout_closed() {
                    return Ok(());
                }
            }
            Ok(_) if line.starts_with("{\"tap_dropped\"") => {
                eprintln!(
                    "ringtail tap: the tap fell behind and skipped {}",
                    line.trim()
                );
            }
            Ok(_) => {
                let mut out = stdout.lock();
                if out
                    .write_all(line.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return Ok(()); // stdout closed (| head): done
                }
            }
            Err(e) => return Err(format!("reading from {addr}: {e}")),
        }
    }
}

/// True when stdout's reader has gone (a closed pipe or a hung-up terminal).
fn stdout_closed() -> bool {
    let mut p = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// glibc's allocator gives each thread that allocates its own arena, and memory freed by
/// another thread (a chunk filled by a tailer, released by the writer) goes back to the arena
/// it came from: on a node with 10,000 files that fragmentation was a quarter of the resident
/// set. One arena, and giving freed memory back to the kernel past 64 KiB at the top of the
/// heap, cut peak RSS from 102 to 74 MiB there and idle RSS from 45 to 37 MiB with 200 files,
/// at no measurable CPU cost: ringtail allocates per read, not per line (BENCHMARKS.md).
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters, and runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 10);
    }
}
