//! What a test expects to reach Loki, and the assertions that compare it with what the receiver
//! stored: shared by the pod, RKE2 and journal scenarios.

use std::collections::BTreeMap;
use std::time::Duration;

use super::proc::Ringtail;
use super::receiver::LokiReceiver;

/// An entry as it should arrive: labels, timestamp, line, structured metadata.
pub type Expected = (
    BTreeMap<String, String>,
    i64,
    String,
    BTreeMap<String, String>,
);

/// A string map (labels or metadata) from pairs.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn got(rx: &LokiReceiver) -> Vec<Expected> {
    rx.entries()
        .into_iter()
        .map(|e| (e.labels, e.ts_ns, e.line, e.metadata))
        .collect()
}

/// Asserts the received entries are exactly `want` (as multisets), printing the difference:
/// entries missing, and entries unexpected or received more often than expected.
pub fn assert_exactly(rx: &LokiReceiver, want: &[Expected]) {
    assert_entries(got(rx), want);
}

/// [`assert_exactly`] on entries a test has already taken (and maybe normalised). Long lines are
/// shown by their start and length.
pub fn assert_entries(got: Vec<Expected>, want: &[Expected]) {
    let mut count: BTreeMap<&Expected, i64> = BTreeMap::new();
    for g in &got {
        *count.entry(g).or_default() += 1;
    }
    for w in want {
        *count.entry(w).or_default() -= 1;
    }
    let short = |(labels, ts, line, meta): &Expected, n: i64| -> String {
        let mut shown: String = format!("{line:?}").chars().take(120).collect();
        if line.len() > 100 {
            shown.push_str(&format!("… ({} bytes)", line.len()));
        }
        format!("{n:+} × {labels:?} ts={ts} {shown} {meta:?}")
    };
    let diff: Vec<String> = count
        .iter()
        .filter(|(_, n)| **n != 0)
        .take(10)
        .map(|(e, n)| short(e, *n))
        .collect();
    assert!(
        diff.is_empty(),
        "received {} entries, expected {}; received minus expected (first 10):\n{}",
        got.len(),
        want.len(),
        diff.join("\n")
    );
}

/// SIGTERM, and the exit 0 the contract promises within the deadline.
pub fn stop(rt: &mut Ringtail) {
    rt.sigterm();
    let status = rt.wait_exit(Duration::from_secs(12));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        rt.logs()
    );
}
