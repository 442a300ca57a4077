//! One scenario's world: a log tree, a data dir, a receiver, a metrics port. Shared by the pod
//! scenarios and the reliability suite, which restart ringtail many times on the same data dir.

use std::path::PathBuf;
use std::time::Duration;

use super::cri::PodDir;
use super::proc::{free_port, pods_only_config, Ringtail};
use super::receiver::LokiReceiver;

pub struct World {
    pub dir: tempfile::TempDir,
    pub rx: LokiReceiver,
    pub port: u16,
    /// ringtail processes started so far (each gets its own `run<n>` folder for its output).
    pub runs: usize,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("pods")).expect("pods dir");
        World {
            dir,
            rx: LokiReceiver::start(),
            port: free_port(),
            runs: 0,
        }
    }

    pub fn pods(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pod(&self, ns: &str, name: &str, uid: &str) -> PodDir {
        PodDir::new(&self.pods(), ns, name, uid)
    }

    pub fn config(&self, extra: &str) -> String {
        let mut c = pods_only_config(&self.data(), &self.pods(), &self.rx.url(), self.port);
        c.push_str(extra);
        c
    }

    /// The config with `keys` (YAML lines, indented as under `loki:`) added to the `loki` block.
    pub fn config_with_loki(&self, keys: &str) -> String {
        self.config("")
            .replacen("loki:\n", &format!("loki:\n  {keys}"), 1)
    }

    /// Starts ringtail with `extra` top-level config (each run in its own folder for its
    /// stdout/stderr) and waits for /ready.
    pub fn start(&mut self, extra: &str) -> Ringtail {
        let cfg = self.config(extra);
        self.start_config(&cfg)
    }

    /// Starts ringtail with a whole config text and waits for /ready.
    pub fn start_config(&mut self, cfg: &str) -> Ringtail {
        self.runs += 1;
        let run_dir = self.dir.path().join(format!("run{}", self.runs));
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let mut rt = Ringtail::start(cfg, &run_dir);
        assert!(
            rt.wait_ready(self.port, Duration::from_secs(10)),
            "not ready\n{}",
            rt.logs()
        );
        rt
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}
