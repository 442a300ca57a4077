//! What ringtail says about itself: metrics, the HTTP endpoints, and its own log lines.

pub mod logger;
pub mod metrics;
pub mod server;
pub mod tap;
