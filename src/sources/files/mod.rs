//! Tailing files: discovery on one thread, tailers on pinned threads, all reading through
//! [`io::BatchIo`]. Pod logs in CRI format are the source here.

pub mod cri;
pub mod discover;
pub mod io;
pub mod schedule;
pub mod tail;
