//! The kube API, for two things only (never for reading logs): this node's pods' `app` and
//! `app_name` labels ([`pods`]), and the cluster's Events, shipped by the one pod that holds a
//! Lease ([`lease`], [`events`]).
//!
//! Why one thread with a current-thread tokio runtime: kube-rs is async, the rest of ringtail is
//! plain threads, and the API is a side path. It never blocks the hot path: discovery reads the
//! pod snapshot without a lock, tailers never see it, and Events enter the ring with `try_send`
//! so a full ring (Loki down) does not stop the Lease from being renewed. When there is no API
//! (no in-cluster service account and no `KUBECONFIG`), pod logs flow without the two labels and
//! Events are not collected; that is said once, at start.

pub mod events;
pub mod lease;
pub mod pods;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::entry::EventsPos;
use crate::ring::RingTx;
use crate::shutdown::Stop;
use crate::telemetry::metrics::METRICS;
use pods::PodCache;

/// The running kube side.
pub struct Kube {
    thread: JoinHandle<()>,
    finish: Arc<Notify>,
    /// This node's pods, for discovery.
    pub pods: Arc<PodCache>,
}

/// How long the kube thread may take, once the writer has stopped, to record the last acked
/// Events position on the Lease and release it.
const FINISH_WITHIN: Duration = Duration::from_secs(3);

/// Starts the kube thread when pods or events are enabled. `ring` and `acks` are for Events:
/// chunks go into the ring, and the positions of acked ones come back through `acks`.
pub fn start(
    cfg: &Config,
    ring: RingTx,
    acks: watch::Receiver<Option<EventsPos>>,
    stop: Arc<Stop>,
) -> Result<Kube, String> {
    let cache = Arc::new(PodCache::default());
    let finish = Arc::new(Notify::new());
    let pods = cfg.logs.pods.enabled.then(|| pods::Plan {
        node: cfg.node_name.clone(),
        grace: cfg.logs.pods.metadata.grace.0,
        cache: cache.clone(),
    });
    let events = cfg.logs.events.enabled.then(|| events::Plan {
        lease: lease::Plan {
            namespace: cfg.logs.events.lease_namespace.clone(),
            name: cfg.logs.events.lease_name.clone(),
            identity: std::env::var("POD_NAME")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| cfg.node_name.clone()),
        },
        max_line: cfg.loki.max_line_size.0 as usize,
        ring,
        acks,
        finish: finish.clone(),
    });
    let absent = cache.clone();
    let thread = std::thread::Builder::new()
        .name("kube".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("cannot start the kube API runtime: {e}; pod logs are shipped without app/app_name and Events are not collected");
                    absent.set_absent();
                    return;
                }
            };
            rt.block_on(run(pods, events, absent, stop));
        })
        .map_err(|e| format!("cannot start the kube thread: {e}"))?;
    Ok(Kube {
        thread,
        finish,
        pods: cache,
    })
}

impl Kube {
    /// Called once the writer has stopped (its last acks are in): the Events holder records the
    /// last position and releases the Lease, so another pod takes over at once.
    pub fn finish(self, stop: &Stop) {
        self.finish.notify_one();
        // Within the exit deadline: `Stop`'s grace keeps a second of slack for this.
        let left = stop
            .remaining()
            .map_or(FINISH_WITHIN, |r| r + Duration::from_millis(500));
        let deadline = Instant::now() + FINISH_WITHIN.min(left);
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
    }
}

async fn run(
    pods: Option<pods::Plan>,
    events: Option<events::Plan>,
    cache: Arc<PodCache>,
    stop: Arc<Stop>,
) {
    let client = match client().await {
        Ok(c) => c,
        Err(e) => {
            cache.set_absent();
            let what = match (pods.is_some(), events.is_some()) {
                (true, true) => "pod logs are shipped without app/app_name, and Kubernetes Events are not collected",
                (true, false) => "pod logs are shipped without app/app_name",
                _ => "Kubernetes Events are not collected",
            };
            // Without Events a node outside a cluster (the demo) loses only two labels: info.
            let level = if events.is_some() {
                log::Level::Warn
            } else {
                log::Level::Info
            };
            log::log!(
                level,
                "no kube API: {e}. {what}. In the DaemonSet, mount the service account token \
                 (automountServiceAccountToken: true); elsewhere set KUBECONFIG{}",
                if events.is_some() {
                    ", or set logs.events.enabled: false"
                } else {
                    ""
                }
            );
            return;
        }
    };
    let pods_task = async {
        if let Some(p) = pods {
            pods::watch(client.clone(), p, &stop).await;
        }
    };
    let events_task = async {
        if let Some(e) = events {
            events::run(client.clone(), e, stop.clone()).await;
        }
    };
    tokio::join!(pods_task, events_task);
}

/// The client kubectl and client-go would build: in-cluster credentials, or `KUBECONFIG`.
async fn client() -> Result<kube::Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    // kube-client would retry 429/503 itself for minutes, hiding an unavailable API from the
    // metrics and the log; the watchers and the Lease loop retry with their own backoff.
    config.default_retry = false;
    // A list (or any call) on a half-open connection would otherwise wait forever; watches get
    // a bookmark or an event well within this, and end server-side after 290 s anyway.
    config.read_timeout = Some(Duration::from_secs(295));
    config.reset_reader_on_write = true;
    config.connect_timeout = Some(Duration::from_secs(10));
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Logs a failing kube API call or watch with backoff (the first failure, then at most one line a
/// minute with how many there were), says when it recovers, and keeps `ringtail_kube_up` and
/// `ringtail_kube_errors_total` for the resource.
pub struct ErrorLog {
    resource: &'static str,
    /// What to check, named by setting or RBAC object.
    hint: String,
    up: Gauge,
    errors: Counter,
    /// Failures since the last success, and when the last line about them was logged.
    failing: Option<(u64, Instant)>,
}

const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

impl ErrorLog {
    pub fn new(resource: &'static str, hint: impl Into<String>) -> ErrorLog {
        let (up, errors) = METRICS.kube_status(resource);
        ErrorLog {
            resource,
            hint: hint.into(),
            up,
            errors,
            failing: None,
        }
    }

    pub fn ok(&mut self) {
        self.up.set(1);
        if let Some((n, _)) = self.failing.take() {
            log::info!(
                "kube API ({}) works again after {n} failed attempt(s)",
                self.resource
            );
        }
    }

    pub fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.up.set(0);
        self.errors.inc();
        match &mut self.failing {
            None => {
                self.failing = Some((1, Instant::now()));
                log::warn!(
                    "kube API ({}): {what}: {e}; retrying with backoff (logs keep flowing). \
                     Check that the API server is reachable and that {}",
                    self.resource,
                    self.hint
                );
            }
            Some((n, at)) => {
                *n += 1;
                if at.elapsed() >= ERROR_LOG_EVERY {
                    *at = Instant::now();
                    log::warn!(
                        "kube API ({}): still failing ({n} attempts): {what}: {e}",
                        self.resource
                    );
                }
            }
        }
    }
}
