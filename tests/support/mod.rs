//! Support code for ringtail's integration tests: a fake Loki, a fake Kubernetes API server, a
//! kubelet/containerd log-tree writer, and a harness for the `ringtail` process. Plain std
//! (threads and `std::net`).
//!
//! Include it from a test file with `mod support;` and `use support::*;`.
//!
//! - [`receiver`]: [`LokiReceiver`], an HTTP/1.1 server that accepts
//!   `POST /loki/api/v1/push` the way Loki's distributor does and records what it stored.
//! - [`cri`]: [`PodDir`] / [`ContainerLog`], CRI log files written exactly as containerd writes
//!   them, rotated exactly as kubelet rotates them, with a deterministic [`Clock`].
//! - [`proc`]: [`Ringtail`], the `ringtail` binary run as a child process.
//! - [`http`]: a small blocking HTTP/1.1 client (used for `/metrics` and by the self-tests).
//! - [`journal`]: real journal files, written by `systemd-journal-remote` from the export format.
//! - [`kubeapi`]: [`FakeKubeApi`], a Kubernetes API server (pods, events, leases; list, watch,
//!   optimistic-concurrency writes) speaking the real wire format, for the kube-rs client.
//! - [`monitoring`]: the rendered manifests' rules, PromQL metric names, and a ringtail that has
//!   shipped something ([`ShippingRingtail`]), for the alert, dashboard and Prometheus tests.
//! - [`world`]: [`World`], one scenario's log tree, data dir, receiver and metrics port.
//! - [`numbered`]: numbered lines written at a target rate with kubelet rotating beside them, and
//!   a checker that accounts for every number the receiver stored (the reliability suite).
#![allow(dead_code)]

pub mod cri;
pub mod expect;
pub mod http;
pub mod journal;
pub mod kubeapi;
pub mod monitoring;
pub mod numbered;
pub mod proc;
pub mod receiver;
pub mod world;

#[allow(unused_imports)]
pub use cri::{
    format_rfc3339nano, parse_rfc3339nano, Clock, ContainerLog, PodDir, Stream, CRI_MAX_LINE,
};
#[allow(unused_imports)]
pub use expect::{assert_entries, assert_exactly, got, map, stop, Expected};
#[allow(unused_imports)]
pub use kubeapi::FakeKubeApi;
#[allow(unused_imports)]
pub use monitoring::ShippingRingtail;
#[allow(unused_imports)]
pub use proc::{
    bin_path, free_port, metric_sum, metric_value, metrics, pods_only_config, run_cli, status_kib,
    try_metrics, CliOutput, Ringtail,
};
#[allow(unused_imports)]
pub use receiver::{
    encode_push, parse_labels, push_entry, push_stream, EntrySink, Limits, LokiReceiver, Received,
    RequestRecord, DROP_CONNECTION, PUSH_PATH,
};
#[allow(unused_imports)]
pub use world::World;

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it is true (returns true) or `timeout` has passed (returns
/// false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The positions a restart would start from, as ringtail's own loader reads them (the
/// snapshot and the changes appended since), from copies taken now: a running ringtail keeps
/// writing them, and the loader sets a corrupt snapshot aside. `None` before the first write.
pub fn committed_positions(
    data_dir: &std::path::Path,
) -> Option<ringtail::positions::store::Loaded> {
    use ringtail::positions::store::{CHANGES_NAME, FILE_NAME};
    let scratch = tempfile::tempdir().ok()?;
    let tmp = format!("{FILE_NAME}.tmp");
    let mut any = false;
    for name in [FILE_NAME, tmp.as_str(), CHANGES_NAME] {
        if let Ok(b) = std::fs::read(data_dir.join(name)) {
            std::fs::write(scratch.path().join(name), b).ok()?;
            any |= name == FILE_NAME;
        }
    }
    any.then(|| ringtail::positions::store::load(scratch.path()).ok())
        .flatten()
}
