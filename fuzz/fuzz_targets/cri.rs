//! Fuzz target `cri`: see `ringtail_fuzz::checks::cri` (fuzz/src/checks.rs) for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringtail_fuzz::checks::cri(data));
