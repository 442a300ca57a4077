//! The seam through which pod labels that only the kube API knows (`app`, `app_name`) reach
//! the pod-log labels. The kube issue fills it with a watch of this node's pods; until then
//! [`NoMetadata`] leaves those labels out, as the contract allows (empty labels are dropped).

/// Labels of a pod taken from its API object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLabels {
    /// Pod label `app`.
    pub app: String,
    /// Pod label `app.kubernetes.io/name`.
    pub app_name: String,
}

/// Looks up a pod by the UID in its log directory name (for static pods, the config hash).
pub trait PodMetadata: Send + Sync {
    fn pod_labels(&self, namespace: &str, pod: &str, uid: &str) -> Option<PodLabels>;
}

/// No kube API: no `app` or `app_name`.
pub struct NoMetadata;

impl PodMetadata for NoMetadata {
    fn pod_labels(&self, _: &str, _: &str, _: &str) -> Option<PodLabels> {
        None
    }
}
