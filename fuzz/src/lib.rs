//! The fuzz targets' checks, as a library so that each target is one line. The same file is
//! compiled into `tests/fuzz_corpus.rs`, which replays `fuzz/corpus/` under `cargo test`.

pub mod checks;
