//! Where log lines come from. Every source turns what it reads into chunks for the ring, each
//! with the position it advances; it reads its start position once, when it starts, and never
//! hears back from the sink.

pub mod files;
pub mod journal;
