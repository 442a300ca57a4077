//! The `ringtail` command: `run`, `check-config` and `version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ringtail::config::Config;

#[derive(Parser)]
#[command(
    name = "ringtail",
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
    /// Print the effective configuration, or the error (exit code 2).
    CheckConfig { file: PathBuf },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
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
