//! Replays every file of every seed corpus in `fuzz/corpus/<target>/` through the fuzz targets'
//! checks, so that `cargo test` catches regressions without a fuzzer (or a nightly toolchain).
//!
//! The checks live in `fuzz/src/checks.rs`, compiled here directly: the fuzz crate is not part
//! of this package's build. To turn a fuzzer's crash into a regression test, copy its input into
//! the target's corpus directory (see `fuzz/README.md`).

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of a directory, sorted; libFuzzer's in-progress `.tmp*` files are left out.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `target`'s check on every file of `dir`; returns how many ran, and the failures.
fn replay(target: &str, dir: &Path) -> (usize, Vec<String>) {
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check named {target}"))
        .1;
    let files = files_in(dir);
    let mut failed = Vec::new();
    for f in &files {
        let data = fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", f.display()));
        }
    }
    (files.len(), failed)
}

fn replay_corpus(target: &str) {
    let dir = fuzz_dir().join("corpus").join(target);
    let (n, failed) = replay(target, &dir);
    assert!(n >= 1, "no corpus file in {}", dir.display());
    assert!(
        failed.is_empty(),
        "{} of {n} {target} corpus files failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{target}: replayed {n} files");
}

#[test]
fn cri() {
    replay_corpus("cri");
}

#[test]
fn tail() {
    replay_corpus("tail");
}

#[test]
fn json_level() {
    replay_corpus("json_level");
}

#[test]
fn trace() {
    replay_corpus("trace");
}

#[test]
fn positions() {
    replay_corpus("positions");
}

#[test]
fn config() {
    replay_corpus("config");
}

#[test]
fn encode() {
    replay_corpus("encode");
}

#[test]
fn gz() {
    replay_corpus("gz");
}

/// Every target has a test above and a corpus directory, and every corpus directory a target.
#[test]
fn corpus_directories_match_the_targets() {
    let mut dirs: Vec<String> = fs::read_dir(fuzz_dir().join("corpus"))
        .expect("fuzz/corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = checks::TARGETS.iter().map(|t| t.0.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for t in &targets {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")),
            "fuzz/Cargo.toml has no [[bin]] for {t}"
        );
    }
}

/// Every corpus holds the edges of its input space: an empty input, a maximal one (`max*`: the
/// largest or fullest input the target takes) and invalid ones (`invalid*`: bytes no producer
/// writes), beside the realistic cases.
#[test]
fn every_corpus_has_empty_maximal_and_invalid_inputs() {
    let mut missing = Vec::new();
    for (target, _) in checks::TARGETS {
        let files = files_in(&fuzz_dir().join("corpus").join(target));
        let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        let has_empty = files
            .iter()
            .any(|f| fs::metadata(f).is_ok_and(|m| m.len() == 0));
        let has_max = files.iter().any(|f| name(f).starts_with("max"));
        let has_invalid = files.iter().any(|f| name(f).starts_with("invalid"));
        for (what, ok) in [
            ("an empty file", has_empty),
            ("a max* file", has_max),
            ("an invalid* file", has_invalid),
        ] {
            if !ok {
                missing.push(format!("fuzz/corpus/{target} has no {what}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
