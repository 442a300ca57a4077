//! This node's pods (field selector `spec.nodeName`), watched for the two labels only the API
//! knows: `app` (pod label `app`) and `app_name` (pod label `app.kubernetes.io/name`).
//!
//! The watch keeps a map by pod UID and publishes an immutable snapshot, keyed by UID and, for
//! static pods (whose log directory carries `kubernetes.io/config.hash` instead), by that hash.
//! Discovery reads the snapshot through an `ArcSwap`: a pointer load, no lock. A deleted pod
//! stays in it for `logs.pods.metadata.grace`, so files found late still get their labels.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

use super::ErrorLog;
use crate::metadata::{PodLabels, PodLookup, PodMetadata};
use crate::shutdown::Stop;
use crate::telemetry::metrics::METRICS;

/// The annotation kubelet puts on a static pod's mirror pod; its log directory is named by it.
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";

const STARTING: u8 = 0;
const SYNCED: u8 = 1;
const ABSENT: u8 = 2;

/// The snapshot discovery reads.
#[derive(Default)]
pub struct PodCache {
    by_id: ArcSwap<HashMap<String, PodLabels>>,
    state: AtomicU8,
}

impl PodMetadata for PodCache {
    fn lookup(&self, uid: &str) -> PodLookup {
        if let Some(l) = self.by_id.load().get(uid) {
            return PodLookup::Found(l.clone());
        }
        match self.state.load(Ordering::Acquire) {
            ABSENT => PodLookup::Absent,
            _ => PodLookup::Pending,
        }
    }
}

impl PodCache {
    /// There is no kube API: nothing will ever be found, and nothing waits.
    pub fn set_absent(&self) {
        self.state.store(ABSENT, Ordering::Release);
    }

    /// Waits, at most `d`, for the first full list of this node's pods (or for it to be clear
    /// that there is no API), so that files found at start get their labels at once.
    pub fn wait_synced(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while self.state.load(Ordering::Acquire) == STARTING && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn publish(&self, pods: &HashMap<String, Known>) {
        let mut by_id = HashMap::with_capacity(pods.len() * 2);
        // Deleted pods first: a static pod's new mirror pod (same config hash) wins over the
        // deleted one still in its grace period.
        for deleted in [true, false] {
            for (uid, k) in pods
                .iter()
                .filter(|(_, k)| k.deleted_at.is_some() == deleted)
            {
                if let Some(h) = &k.config_hash {
                    by_id.insert(h.clone(), k.labels.clone());
                }
                by_id.insert(uid.clone(), k.labels.clone());
            }
        }
        self.by_id.store(Arc::new(by_id));
    }
}

/// What the pods watch needs.
pub struct Plan {
    pub node: String,
    pub grace: Duration,
    pub cache: Arc<PodCache>,
}

struct Known {
    labels: PodLabels,
    config_hash: Option<String>,
    deleted_at: Option<Instant>,
}

/// How often deleted pods past their grace are let go.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Watches this node's pods until ringtail stops. Failures are logged with backoff and counted;
/// the last snapshot stays in use while the API is away.
pub async fn watch(client: kube::Client, plan: Plan, stop: &Stop) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", plan.node));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut pods: HashMap<String, Known> = HashMap::new();
    // UIDs listed since the last `Init`: what is not among them at `InitDone` was deleted.
    let mut listing: Option<HashSet<String>> = None;
    let mut errors = ErrorLog::new("pods", "the ClusterRole grants pods get/list/watch");
    let relists = METRICS.kube_relists("pods");
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut first_list = true;
    while !stop.stopping() {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { break };
                let now = Instant::now();
                match ev {
                    Err(e) => errors.failed("watching this node's pods", &e),
                    // `Init` comes before the list is tried: it says nothing of the API.
                    Ok(Event::Init) => listing = Some(HashSet::new()),
                    Ok(Event::InitApply(p)) => {
                        errors.ok();
                        if let (Some(uid), Some(l)) = (upsert(&mut pods, &p), listing.as_mut()) {
                            l.insert(uid);
                        }
                    }
                    Ok(Event::InitDone) => {
                        errors.ok();
                        if let Some(listed) = listing.take() {
                            for (uid, k) in pods.iter_mut() {
                                if !listed.contains(uid) && k.deleted_at.is_none() {
                                    k.deleted_at = Some(now);
                                }
                            }
                        }
                        if !first_list {
                            relists.inc();
                        }
                        first_list = false;
                        plan.cache.publish(&pods);
                        plan.cache.state.store(SYNCED, Ordering::Release);
                        log::debug!("kube API: {} pods on node {}", pods.len(), plan.node);
                    }
                    Ok(Event::Apply(p)) => {
                        errors.ok();
                        upsert(&mut pods, &p);
                        plan.cache.publish(&pods);
                    }
                    // Kept for the grace period: nothing to publish yet.
                    Ok(Event::Delete(p)) => {
                        errors.ok();
                        if let Some(k) = p.metadata.uid.as_deref().and_then(|u| pods.get_mut(u)) {
                            k.deleted_at = Some(now);
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                let before = pods.len();
                pods.retain(|_, k| k.deleted_at.is_none_or(|at| at.elapsed() < plan.grace));
                if pods.len() != before {
                    plan.cache.publish(&pods);
                }
            }
        }
    }
}

/// Adds or updates a pod; returns its UID.
fn upsert(pods: &mut HashMap<String, Known>, p: &Pod) -> Option<String> {
    let uid = p.metadata.uid.clone()?;
    let label = |k: &str| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let known = Known {
        labels: PodLabels {
            app: label("app"),
            app_name: label("app.kubernetes.io/name"),
        },
        config_hash: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_HASH))
            .cloned(),
        deleted_at: None,
    };
    pods.insert(uid.clone(), known);
    Some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, labels: &[(&str, &str)], hash: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        p.metadata.annotations = hash.map(|h| [(CONFIG_HASH.to_string(), h.to_string())].into());
        p
    }

    #[test]
    fn snapshot_by_uid_and_static_pod_hash() {
        let cache = PodCache::default();
        let mut pods = HashMap::new();
        upsert(
            &mut pods,
            &pod(
                "u1",
                &[("app", "web"), ("app.kubernetes.io/name", "emoji")],
                None,
            ),
        );
        upsert(
            &mut pods,
            &pod("u2", &[("component", "kube-apiserver")], Some("h2")),
        );
        cache.publish(&pods);
        let web = PodLabels {
            app: "web".into(),
            app_name: "emoji".into(),
        };
        assert_eq!(cache.lookup("u1"), PodLookup::Found(web));
        // A pod without the two labels is known: its files do not wait.
        assert_eq!(cache.lookup("h2"), PodLookup::Found(PodLabels::default()));
        assert_eq!(cache.lookup("u2"), PodLookup::Found(PodLabels::default()));
        assert_eq!(cache.lookup("u3"), PodLookup::Pending);
        cache.set_absent();
        assert_eq!(cache.lookup("u3"), PodLookup::Absent);
    }
}
