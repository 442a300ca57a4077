//! The seam through which pod labels that only the kube API knows (`app`, `app_name`) reach
//! the pod-log labels. [`crate::k8s::pods`] fills it with a watch of this node's pods; without a
//! kube API, [`NoMetadata`] leaves those labels out, as the contract allows (empty labels are
//! dropped).
//!
//! Discovery asks once per pod directory and scan, never a tailer: the hot path does not see
//! this seam at all.

/// Labels of a pod taken from its API object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLabels {
    /// Pod label `app`.
    pub app: String,
    /// Pod label `app.kubernetes.io/name`.
    pub app_name: String,
}

/// What is known of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodLookup {
    /// Its labels (possibly empty: a pod without `app` labels).
    Found(PodLabels),
    /// Not (yet) known: its API object may still arrive, so a new file may wait for it.
    Pending,
    /// There is no kube API: labels never come, and nothing waits for them.
    Absent,
}

/// Looks up a pod by the UID in its log directory name (for static pods, the config hash).
pub trait PodMetadata: Send + Sync {
    fn lookup(&self, uid: &str) -> PodLookup;
}

/// No kube API: no `app` or `app_name`.
pub struct NoMetadata;

impl PodMetadata for NoMetadata {
    fn lookup(&self, _: &str) -> PodLookup {
        PodLookup::Absent
    }
}
