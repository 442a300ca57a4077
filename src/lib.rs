//! ringtail: a log collector for Kubernetes nodes that ships every line to Grafana Loki, at
//! least once.
//!
//! The data flows one way: sources → process → ring → sink. Only acks travel back, from the sink
//! to the positions. See the README for the architecture and `contract.md` for what reaches Loki.

pub mod config;
pub mod entry;
pub mod k8s;
pub mod metadata;
pub mod positions;
pub mod process;
pub mod ring;
pub mod run;
pub mod shutdown;
pub mod sink;
pub mod sources;
pub mod telemetry;
pub mod timefmt;
