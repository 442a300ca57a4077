//! Fuzz target `gz`: see `ringtail_fuzz::checks::gz` (fuzz/src/checks.rs) for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringtail_fuzz::checks::gz(data));
