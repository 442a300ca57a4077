//! Tailing files: discovery on one thread, tailers on pinned threads, all reading through
//! [`io::BatchIo`]: pod logs in containerd's CRI format, and RKE2's own daemon logs as plain
//! lines.

pub mod cri;
pub mod discover;
pub mod io;
pub mod recover;
pub mod schedule;
pub mod tail;
pub mod watch;

/// How a file's lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// containerd's CRI records (pod logs), with partial lines to join.
    Cri,
    /// One line per entry, with a klog header or logrus fields (RKE2's kubelet and containerd).
    Plain,
}

impl Format {
    /// The `source` label of the `ringtail_read_*` metrics.
    pub fn source(self) -> &'static str {
        match self {
            Format::Cri => "pods",
            Format::Plain => "rke2",
        }
    }
}
