//! Every metric ringtail exposes, registered in one place.
//!
//! The `loki_write_*` names and labels are Alloy's (`host`, `tenant`, `reason`, `status_code`), so
//! the seed's alerts and dashboards keep working. `loki_process_duration_seconds` is ringtail's
//! own: Alloy never had it, though the seed's alert expects it. Everything else is `ringtail_*`.
//!
//! Handles for hot counters are created once and cloned out of their families, so the hot path
//! increments an atomic and never takes the family's lock.

use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::process::LineCounts;

type Labels = Vec<(&'static str, String)>;

/// Why entries were dropped on purpose (Alloy's reason values, all pre-initialised to 0).
pub const DROP_REASONS: [&str; 5] = [
    "ingester_error",
    "rate_limited",
    "stream_limited",
    "line_too_long",
    "queue_is_full",
];

pub struct Metrics {
    registry: Mutex<Registry>,
    pub sent_bytes: Family<Labels, Counter>,
    pub sent_entries: Family<Labels, Counter>,
    pub dropped_bytes: Family<Labels, Counter>,
    pub dropped_entries: Family<Labels, Counter>,
    pub request_duration: Family<Labels, Histogram>,
    pub batch_retries: Family<Labels, Counter>,
    pub process_duration: Histogram,
    pub files_tracked: Family<Labels, Gauge>,
    pub streams_tracked: Family<Labels, Gauge>,
    pub read_lag: Family<Labels, Gauge>,
    pub files_open: Gauge,
    pub loki_in_flight: Gauge,
    pub loki_in_flight_limit: Gauge,
    pub read_bytes: Family<Labels, Counter>,
    pub read_lines: Family<Labels, Counter>,
    pub io_mode: Family<Labels, Gauge>,
    pub lines_truncated: Counter,
    pub lines_repaired: Counter,
    pub lines_malformed: Counter,
    pub file_events: Family<Labels, Counter>,
    pub bytes_lost: Family<Labels, Counter>,
    pub positions_commits: Family<Labels, Counter>,
    pub positions_writes: Counter,
    pub positions_errors: Counter,
    pub positions_gaps: Counter,
    pub ring_full_seconds: Counter<f64, AtomicU64>,
    pub kube_up: Family<Labels, Gauge>,
    pub kube_errors: Family<Labels, Counter>,
    pub kube_relists: Family<Labels, Counter>,
    pub events_leader: Gauge,
    pub tap_clients: Gauge,
    pub events_shipped: Counter,
    pub events_skipped: Counter,
    /// The journal vacuumed past the committed cursor while ringtail was down: entries lost
    /// (when their sequence numbers tell), and the span of time between.
    pub journal_lost_entries: Counter,
    pub journal_lost_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub recovered_lines: Counter,
    pub inotify_watches: Gauge,
    pub inotify_overflows: Counter,
    pub files_polled: Gauge,
}

fn request_buckets() -> impl Iterator<Item = f64> {
    // Prometheus' default buckets, like Alloy's request histogram.
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

fn process_buckets() -> impl Iterator<Item = f64> {
    // Reaches 10 s and beyond, so the seed's "p99 > 1s" alert means something.
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ]
    .into_iter()
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            sent_bytes: Family::default(),
            sent_entries: Family::default(),
            dropped_bytes: Family::default(),
            dropped_entries: Family::default(),
            request_duration: Family::new_with_constructor(|| Histogram::new(request_buckets())),
            batch_retries: Family::default(),
            process_duration: Histogram::new(process_buckets()),
            files_tracked: Family::default(),
            streams_tracked: Family::default(),
            read_lag: Family::default(),
            files_open: Gauge::default(),
            loki_in_flight: Gauge::default(),
            loki_in_flight_limit: Gauge::default(),
            read_bytes: Family::default(),
            read_lines: Family::default(),
            io_mode: Family::default(),
            lines_truncated: Counter::default(),
            lines_repaired: Counter::default(),
            lines_malformed: Counter::default(),
            file_events: Family::default(),
            bytes_lost: Family::default(),
            positions_commits: Family::default(),
            positions_writes: Counter::default(),
            positions_errors: Counter::default(),
            positions_gaps: Counter::default(),
            ring_full_seconds: Counter::default(),
            kube_up: Family::default(),
            kube_errors: Family::default(),
            kube_relists: Family::default(),
            events_leader: Gauge::default(),
            tap_clients: Gauge::default(),
            events_shipped: Counter::default(),
            events_skipped: Counter::default(),
            journal_lost_entries: Counter::default(),
            journal_lost_seconds: Counter::default(),
            recovered_lines: Counter::default(),
            inotify_watches: Gauge::default(),
            inotify_overflows: Counter::default(),
            files_polled: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            // prometheus-client appends `_total` to counters itself.
            r.register(
                "loki_write_sent_bytes",
                "Compressed bytes of batches Loki accepted",
                m.sent_bytes.clone(),
            );
            r.register(
                "loki_write_sent_entries",
                "Entries Loki accepted",
                m.sent_entries.clone(),
            );
            r.register(
                "loki_write_dropped_bytes",
                "Bytes dropped on purpose, by reason",
                m.dropped_bytes.clone(),
            );
            r.register(
                "loki_write_dropped_entries",
                "Entries dropped on purpose, by reason",
                m.dropped_entries.clone(),
            );
            r.register(
                "loki_write_request_duration_seconds",
                "Push request duration, by status code (-1: transport error)",
                m.request_duration.clone(),
            );
            r.register(
                "loki_write_batch_retries",
                "Push attempts that will be retried",
                m.batch_retries.clone(),
            );
            r.register(
                "loki_process_duration_seconds",
                "Time from reading entries to handing them to the writer, one observation per chunk (one read of a file, or up to 1,000 journal entries)",
                m.process_duration.clone(),
            );
            r.register(
                "ringtail_files_tracked",
                "Files being tailed, by source",
                m.files_tracked.clone(),
            );
            r.register(
                "ringtail_streams_tracked",
                "Distinct label sets (Loki streams) being shipped, by source",
                m.streams_tracked.clone(),
            );
            r.register(
                "ringtail_read_lag_bytes",
                "Bytes in tailed files not yet acked by Loki (file size minus committed offset), by source",
                m.read_lag.clone(),
            );
            r.register(
                "ringtail_loki_in_flight",
                "Pushes to Loki in flight now",
                m.loki_in_flight.clone(),
            );
            r.register(
                "ringtail_loki_in_flight_limit",
                "Pushes to Loki allowed in flight at once: the adaptive limit, within loki.min_in_flight and loki.max_in_flight",
                m.loki_in_flight_limit.clone(),
            );
            r.register(
                "ringtail_files_open",
                "Open file descriptors of tailed files",
                m.files_open.clone(),
            );
            r.register(
                "ringtail_read_bytes",
                "Bytes read, by source",
                m.read_bytes.clone(),
            );
            r.register(
                "ringtail_read_lines",
                "Lines read, by source",
                m.read_lines.clone(),
            );
            r.register(
                "ringtail_io_mode",
                "1 for the read path in use: io_uring or pread",
                m.io_mode.clone(),
            );
            r.register(
                "ringtail_lines_truncated",
                "Lines cut to max_line_size",
                m.lines_truncated.clone(),
            );
            r.register(
                "ringtail_lines_repaired",
                "Lines whose invalid UTF-8 was replaced with U+FFFD",
                m.lines_repaired.clone(),
            );
            r.register(
                "ringtail_lines_malformed",
                "Lines that were not CRI records, sent raw",
                m.lines_malformed.clone(),
            );
            r.register(
                "ringtail_file_events",
                "Source events by kind: new, renamed, finished, truncated, skipped, unreadable, closed_lru, gone_while_down, read_error, overlong_record, partial_flushed, without_metadata, relabelled, journal_*, event_without_object",
                m.file_events.clone(),
            );
            r.register(
                "ringtail_bytes_lost",
                "Bytes that could not be read, by reason (truncated: a lower bound, from the sizes seen before the cut)",
                m.bytes_lost.clone(),
            );
            r.register(
                "ringtail_kube_up",
                "1 while the kube API watch of a resource (pods, events) works, 0 while it fails",
                m.kube_up.clone(),
            );
            r.register(
                "ringtail_kube_errors",
                "Failed kube API calls and watches, by resource (pods, events, leases)",
                m.kube_errors.clone(),
            );
            r.register(
                "ringtail_kube_watch_restarts",
                "Watches that had to list again (410 Gone, or a new start), by resource",
                m.kube_relists.clone(),
            );
            r.register(
                "ringtail_events_leader",
                "1 while this pod holds the events Lease and ships Kubernetes Events",
                m.events_leader.clone(),
            );
            r.register(
                "ringtail_tap_clients",
                "`ringtail tap` clients connected",
                m.tap_clients.clone(),
            );
            r.register(
                "ringtail_events_shipped",
                "Kubernetes Events handed to the writer",
                m.events_shipped.clone(),
            );
            r.register(
                "ringtail_events_skipped",
                "Kubernetes Events not shipped because they were already (listed again after a relist or failover)",
                m.events_skipped.clone(),
            );
            r.register(
                "ringtail_positions_commits",
                "Acked positions committed (file offsets, journal cursors, Events positions), by source",
                m.positions_commits.clone(),
            );
            r.register(
                "ringtail_positions_writes",
                "Positions files written",
                m.positions_writes.clone(),
            );
            r.register(
                "ringtail_positions_errors",
                "Positions files that could not be written or read",
                m.positions_errors.clone(),
            );
            r.register(
                "ringtail_journal_lost_entries",
                "Journal entries vacuumed by journald before ringtail read them (counted when the journal's sequence numbers tell how many)",
                m.journal_lost_entries.clone(),
            );
            r.register(
                "ringtail_journal_lost_seconds",
                "Seconds of journal vacuumed before ringtail read them: from the committed cursor's entry to the oldest one still there",
                m.journal_lost_seconds.clone(),
            );
            r.register(
                "ringtail_recovered_lines",
                "Lines shipped from rotated files that kubelet compressed while ringtail was down",
                m.recovered_lines.clone(),
            );
            r.register(
                "ringtail_inotify_watches",
                "inotify watches held on log directories (0: inotify is off or unavailable)",
                m.inotify_watches.clone(),
            );
            r.register(
                "ringtail_inotify_overflows",
                "Times inotify's event queue overflowed, each answered by a scan of every file",
                m.inotify_overflows.clone(),
            );
            r.register(
                "ringtail_files_polled",
                "Tracked files read by polling, because their directory has no inotify watch",
                m.files_polled.clone(),
            );
            r.register(
                "ringtail_positions_gaps",
                "Acked advances that did not continue the previous one (a bug if not 0)",
                m.positions_gaps.clone(),
            );
            r.register(
                "ringtail_ring_full_seconds",
                "Seconds readers waited because the ring to the writer was full",
                m.ring_full_seconds.clone(),
            );
        }
        m
    }

    /// Creates the writer's series for `host` and `tenant`, drop reasons at 0, as Alloy does.
    pub fn init_writer(&self, host: &str, tenant: &str) {
        let base = writer_labels(host, tenant);
        let _ = self.sent_bytes.get_or_create(&base);
        let _ = self.sent_entries.get_or_create(&base);
        let _ = self.batch_retries.get_or_create(&base);
        for reason in DROP_REASONS {
            let l = with_reason(&base, reason);
            let _ = self.dropped_bytes.get_or_create(&l);
            let _ = self.dropped_entries.get_or_create(&l);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }

    pub fn source_counter(family: &Family<Labels, Counter>, source: &str) -> Counter {
        family
            .get_or_create(&vec![("source", source.to_string())])
            .clone()
    }

    pub fn file_event(&self, event: &'static str) {
        self.file_events
            .get_or_create(&vec![("event", event.to_string())])
            .inc();
    }

    /// Adds what a processor counted between two snapshots (truncated, repaired, malformed).
    pub fn add_line_counts(&self, before: LineCounts, after: LineCounts) {
        self.lines_truncated
            .inc_by(after.truncated - before.truncated);
        self.lines_repaired.inc_by(after.repaired - before.repaired);
        self.lines_malformed
            .inc_by(after.malformed - before.malformed);
    }

    pub fn file_event_n(&self, event: &'static str, n: u64) {
        self.file_events
            .get_or_create(&vec![("event", event.to_string())])
            .inc_by(n);
    }

    /// `ringtail_kube_up` and `ringtail_kube_errors_total` of one resource.
    pub fn kube_status(&self, resource: &'static str) -> (Gauge, Counter) {
        let l = vec![("resource", resource.to_string())];
        (
            self.kube_up.get_or_create(&l).clone(),
            self.kube_errors.get_or_create(&l).clone(),
        )
    }

    pub fn kube_relists(&self, resource: &'static str) -> Counter {
        self.kube_relists
            .get_or_create(&vec![("resource", resource.to_string())])
            .clone()
    }

    /// Discovery's per-source gauges.
    /// Sets `ringtail_files_tracked` and `ringtail_streams_tracked` of a file source.
    pub fn source_counts(&self, source: &'static str, files: i64, streams: i64) {
        let l = vec![("source", source.to_string())];
        self.files_tracked.get_or_create(&l).set(files);
        self.streams_tracked.get_or_create(&l).set(streams);
    }

    /// Sets `ringtail_read_lag_bytes` of a file source.
    pub fn read_lag(&self, source: &'static str, lag: u64) {
        self.read_lag
            .get_or_create(&vec![("source", source.to_string())])
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// The `ringtail_positions_commits_total` counter of a source (kept by the caller: getting
    /// it takes the family's lock).
    pub fn positions_committed(&self, source: &'static str) -> Counter {
        self.positions_commits
            .get_or_create(&vec![("source", source.to_string())])
            .clone()
    }

    /// Sets `ringtail_streams_tracked` for a source that is not a file tree.
    pub fn streams(&self, source: &'static str, n: usize) {
        self.streams_tracked
            .get_or_create(&vec![("source", source.to_string())])
            .set(n as i64);
    }

    pub fn lost(&self, reason: &'static str, bytes: u64) {
        self.bytes_lost
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(bytes);
    }
}

pub fn writer_labels(host: &str, tenant: &str) -> Labels {
    vec![("host", host.to_string()), ("tenant", tenant.to_string())]
}

pub fn with_reason(base: &Labels, reason: &str) -> Labels {
    let mut l = base.clone();
    l.push(("reason", reason.to_string()));
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_alloy_names_with_reasons_at_zero() {
        METRICS.init_writer("loki:3100", "");
        let text = METRICS.render();
        for name in [
            "loki_write_sent_bytes_total{host=\"loki:3100\",tenant=\"\"} 0",
            "loki_write_dropped_entries_total{host=\"loki:3100\",tenant=\"\",reason=\"queue_is_full\"} 0",
            "# TYPE loki_process_duration_seconds histogram",
            "loki_process_duration_seconds_bucket{le=\"10.0\"}",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
