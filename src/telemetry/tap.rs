//! `ringtail tap`: the answer to "are my logs collected?", like `vector tap` or Alloy's live
//! debugging. A running ringtail serves `GET /tap?source=pods&match=namespace%3Demojivoto` on
//! its metrics port, to loopback clients only (log lines are data: reach it with `kubectl exec`
//! or `kubectl port-forward`), as the stdout sink's JSON lines of what the writer is about to
//! send. `ringtail tap` is the client; `ringtail tap --config FILE` instead runs a pipeline in
//! the foreground that ships nothing and prints what it would send.
//!
//! The hub costs one atomic load per chunk while no one taps. A slow tap never slows the
//! writer: its queue is bounded, and what does not fit is dropped and reported to it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::entry::{Chunk, LabelSet};
use crate::sink::stdout::{entry_json, labels_json};
use crate::telemetry::metrics::METRICS;

/// The sources a tap can ask for, and the `source` label value each has (pod logs have none).
const SOURCES: [(&str, Option<&str>); 4] = [
    ("pods", None),
    ("rke2", Some("rke2")),
    ("journal", Some("journal")),
    ("events", Some("kubernetes-events")),
];

/// Structured-metadata names (contract §1): not labels, so `--match` cannot select them.
const META_KEYS: [&str; 8] = [
    "stream",
    "level",
    "trace_id",
    "truncated",
    "pid",
    "syslog_identifier",
    "name",
    "reason",
];

/// Which entries a tap wants: one source (or all), and labels that must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    source: Option<&'static str>,
    matches: Vec<(String, String)>,
}

impl Filter {
    /// From the command line: `--source` and `--match name=value` (repeatable). Matches are on
    /// stream labels; a structured-metadata name (`level`, `trace_id`, ...) is refused rather than
    /// silently matching nothing.
    pub fn new(source: Option<&str>, matches: &[String]) -> Result<Filter, String> {
        let source = match source {
            None => None,
            Some(s) => Some(
                SOURCES
                    .iter()
                    .find(|(name, _)| *name == s)
                    .map(|(name, _)| *name)
                    .ok_or_else(|| {
                        format!("--source {s:?}: use one of pods, rke2, journal, events")
                    })?,
            ),
        };
        let matches = matches
            .iter()
            .map(|m| match m.split_once('=') {
                Some((k, _)) if META_KEYS.contains(&k) => Err(format!(
                    "--match {m:?}: {k} is structured metadata, not a stream label; tap matches \
                     stream labels (pipe the output to jq or grep for metadata)"
                )),
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(format!(
                    "--match {m:?}: use label=value, e.g. --match namespace=emojivoto"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { source, matches })
    }

    /// The query string of `/tap`.
    pub fn to_query(&self) -> String {
        let mut q: Vec<String> = Vec::new();
        if let Some(s) = self.source {
            q.push(format!("source={s}"));
        }
        for (k, v) in &self.matches {
            q.push(format!("match={}", encode(&format!("{k}={v}"))));
        }
        q.join("&")
    }

    /// From the query string of `/tap`.
    pub fn from_query(query: &str) -> Result<Filter, String> {
        let mut source = None;
        let mut matches = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
            match k {
                "source" => source = Some(v),
                "match" => matches.push(v),
                other => return Err(format!("unknown parameter {other:?}: use source and match")),
            }
        }
        Filter::new(source.as_deref(), &matches)
    }

    /// Whether entries with these labels are wanted.
    pub fn accepts(&self, labels: &LabelSet) -> bool {
        let get = |name: &str| {
            labels
                .pairs()
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(s) = self.source {
            let want = SOURCES.iter().find(|(n, _)| *n == s).and_then(|(_, l)| *l);
            if get("source") != want {
                return false;
            }
        }
        self.matches.iter().all(|(k, v)| get(k) == Some(v.as_str()))
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Bytes of rendered lines a tap may have queued; past this, lines are dropped (and counted for
/// it). A tap's reader (`kubectl exec`, a terminal) can be much slower than a node's logs: its
/// queue must cost the shipper a bounded amount of memory.
pub const QUEUE_BYTES: usize = 4 << 20;
/// Taps at once: each holds a connection of the metrics server.
pub const MAX_TAPS: usize = 4;

struct Sub {
    id: u64,
    filter: Filter,
    tx: Sender<Arc<str>>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Sub {
    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < QUEUE_BYTES
    }
}

/// One tap's end; dropping it closes the tap.
pub struct Subscription {
    lines: Receiver<Arc<str>>,
    queued: Arc<AtomicUsize>,
    /// Lines that did not fit in its queue.
    pub dropped: Arc<AtomicU64>,
    id: u64,
    hub: &'static Tap,
}

impl Subscription {
    /// The next line, waiting at most `d`.
    pub fn recv_timeout(&self, d: Duration) -> Result<Arc<str>, RecvTimeoutError> {
        let line = self.lines.recv_timeout(d)?;
        self.queued.fetch_sub(line.len(), Ordering::Relaxed);
        Ok(line)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.hub.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.id != self.id);
        self.hub.set_count(subs.len());
    }
}

/// The taps of this process.
#[derive(Default)]
pub struct Tap {
    subs: Mutex<Vec<Sub>>,
    count: AtomicUsize,
    next_id: AtomicU64,
}

pub static TAP: LazyLock<Tap> = LazyLock::new(Tap::default);

impl Tap {
    fn set_count(&self, n: usize) {
        self.count.store(n, Ordering::Release);
        METRICS.tap_clients.set(n as i64);
    }

    /// `None` when [`MAX_TAPS`] are already open.
    pub fn subscribe(&'static self, filter: Filter) -> Option<Subscription> {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        if subs.len() >= MAX_TAPS {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, lines) = channel();
        let (queued, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
        subs.push(Sub {
            id,
            filter,
            tx,
            queued: queued.clone(),
            dropped: dropped.clone(),
        });
        self.set_count(subs.len());
        Some(Subscription {
            lines,
            queued,
            dropped,
            id,
            hub: self,
        })
    }

    /// Hands a chunk's wanted entries to the taps, each rendered once for all of them; a tap
    /// whose queue is full costs no rendering, only a count. Taps that hung up are let go.
    pub fn publish(&self, chunk: &Chunk) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        // Per label set: which taps want it, and its JSON (rendered only if someone does).
        let wants: Vec<Vec<bool>> = chunk
            .labels
            .iter()
            .map(|set| subs.iter().map(|s| s.filter.accepts(set)).collect())
            .collect();
        let labels: Vec<Option<String>> = chunk
            .labels
            .iter()
            .zip(&wants)
            .map(|(set, w)| w.contains(&true).then(|| labels_json(set)))
            .collect();
        let mut gone = vec![false; subs.len()];
        let mut line = String::new();
        for e in &chunk.entries {
            let li = usize::from(e.labels).min(chunk.labels.len() - 1);
            let (Some(l), w) = (&labels[li], &wants[li]) else {
                continue;
            };
            let with_room: Vec<usize> = (0..subs.len())
                .filter(|&i| w[i] && !gone[i])
                .filter(|&i| {
                    let room = subs[i].has_room();
                    if !room {
                        subs[i].dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    room
                })
                .collect();
            if with_room.is_empty() {
                continue;
            }
            line.clear();
            entry_json(chunk, e, l, &mut line);
            let shared: Arc<str> = Arc::from(line.as_str());
            for i in with_room {
                subs[i].queued.fetch_add(shared.len(), Ordering::Relaxed);
                if subs[i].tx.send(shared.clone()).is_err() {
                    gone[i] = true;
                }
            }
        }
        let mut i = 0;
        subs.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        self.set_count(subs.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{EntryRec, Span};

    fn pod(ns: &str) -> Arc<LabelSet> {
        LabelSet::new([("namespace", ns.to_string()), ("pod", "p".to_string())])
    }

    #[test]
    fn filters_by_source_and_labels() {
        let journal = LabelSet::new([
            ("source", "journal".to_string()),
            ("unit", "kubelet.service".to_string()),
        ]);
        let f = Filter::new(Some("pods"), &["namespace=emojivoto".into()]).unwrap();
        assert!(f.accepts(&pod("emojivoto")));
        assert!(!f.accepts(&pod("other")));
        assert!(!f.accepts(&journal));
        let f = Filter::new(Some("journal"), &[]).unwrap();
        assert!(f.accepts(&journal) && !f.accepts(&pod("emojivoto")));
        assert!(Filter::default().accepts(&journal));
        assert!(Filter::new(Some("files"), &[])
            .unwrap_err()
            .contains("pods, rke2"));
        assert!(Filter::new(None, &["novalue".into()]).is_err());
        let e = Filter::new(None, &["level=error".into()]).unwrap_err();
        assert!(e.contains("structured metadata"), "{e}");
    }

    #[test]
    fn the_query_round_trips() {
        let f = Filter::new(Some("events"), &["namespace=a b".into(), "kind=Pod".into()]).unwrap();
        assert_eq!(
            f.to_query(),
            "source=events&match=namespace%3Da%20b&match=kind%3DPod"
        );
        assert_eq!(Filter::from_query(&f.to_query()), Ok(f));
        assert!(Filter::from_query("sauce=pods").is_err());
        assert!(Filter::from_query("match=%zz").is_err());
    }

    #[test]
    fn taps_get_what_they_asked_for_and_slow_ones_lose_lines_not_the_writer() {
        let tap: &'static Tap = Box::leak(Box::default());
        let mut c = Chunk::new(pod("a"));
        let b = c.label_index(&pod("b"));
        for (labels, text) in [(0, "one"), (b, "two"), (0, "three")] {
            let line: Span = c.push_valid(text);
            c.entries.push(EntryRec {
                labels,
                ts_ns: 0,
                line,
                meta_start: 0,
                meta_end: 0,
            });
        }
        tap.publish(&c); // nobody listens: nothing happens
        let only_a = tap
            .subscribe(Filter::new(None, &["namespace=a".into()]).unwrap())
            .unwrap();
        tap.publish(&c);
        let got: Vec<String> = std::iter::from_fn(|| {
            only_a
                .recv_timeout(Duration::from_millis(1))
                .ok()
                .map(|l| l.to_string())
        })
        .collect();
        assert_eq!(
            got,
            [
                "{\"labels\":{\"namespace\":\"a\",\"pod\":\"p\"},\"ts\":\"1970-01-01T00:00:00Z\",\"line\":\"one\",\"metadata\":{}}\n",
                "{\"labels\":{\"namespace\":\"a\",\"pod\":\"p\"},\"ts\":\"1970-01-01T00:00:00Z\",\"line\":\"three\",\"metadata\":{}}\n",
            ]
        );
        assert_eq!(only_a.queued.load(Ordering::Relaxed), 0);
        // A reader that does not keep up: its queue stops at the byte budget, the rest is counted.
        let line_len = got[0].len();
        let rounds = QUEUE_BYTES / line_len; // two lines per round: the budget is passed
        for _ in 0..rounds {
            tap.publish(&c);
        }
        let queued = only_a.queued.load(Ordering::Relaxed);
        assert!(
            queued >= QUEUE_BYTES && queued < QUEUE_BYTES + 2 * line_len,
            "{queued}"
        );
        let mut kept = 0;
        while only_a.recv_timeout(Duration::from_millis(1)).is_ok() {
            kept += 1;
        }
        assert_eq!(only_a.queued.load(Ordering::Relaxed), 0);
        assert_eq!(
            only_a.dropped.load(Ordering::Relaxed),
            (2 * rounds - kept) as u64
        );
        drop(only_a);
        assert_eq!(tap.count.load(Ordering::Relaxed), 0);
        let subs: Vec<_> = (0..MAX_TAPS)
            .map(|_| tap.subscribe(Filter::default()).unwrap())
            .collect();
        assert!(tap.subscribe(Filter::default()).is_none());
        drop(subs);
        assert!(tap.subscribe(Filter::default()).is_some());
    }
}
