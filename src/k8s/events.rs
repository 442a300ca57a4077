//! Kubernetes Events (`logs.events`): shipped by the holder of the events Lease only, each once.
//!
//! Core v1 Events, not `events.k8s.io/v1`: core v1 carries every field of the contract's line
//! under its own name (`source.component`, `source.host`, `lastTimestamp`, `count`), and it is
//! what Alloy watched, so lines read the same.
//!
//! Order and resume: a list is sorted by resourceVersion before it is shipped, and a watch
//! delivers in that order, so "everything up to resourceVersion R was shipped" is one number. The
//! last acked one is written on the Lease ([`super::lease`]); a new holder (after a failover, a
//! restart, or a `410 Gone` relist) skips what is at or before it and ships the rest the API
//! still has. An update of an Event (a new count) has a new resourceVersion and is shipped; the
//! same resourceVersion seen again is not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::{watch, Notify};

use super::lease::{self, Elector, RENEW_DEADLINE, RETRY_PERIOD};
use super::ErrorLog;
use crate::config::JsonLine;
use crate::entry::{Advance, Chunk, EventsPos, LabelSet, MetaKey};
use crate::process::Processor;
use crate::ring::RingTx;
use crate::shutdown::Stop;
use crate::telemetry::metrics::METRICS;

/// What the events shipper needs.
pub struct Plan {
    pub lease: lease::Plan,
    pub max_line: usize,
    pub ring: RingTx,
    /// Positions of acked Events chunks, from the writer.
    pub acks: watch::Receiver<Option<EventsPos>>,
    /// Notified once the writer has stopped.
    pub finish: Arc<Notify>,
}

/// Events per chunk.
const CHUNK_EVENTS: usize = 500;
/// How often a full ring is tried again.
const RING_RETRY: Duration = Duration::from_millis(50);
/// How often the holder may write the Lease: acked positions are coalesced to this.
const WRITE_EVERY: Duration = Duration::from_millis(500);
/// One Lease call's limit (a half-open connection must not hold the loop).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The limit of each of the last two calls at shutdown (record, release).
const FINAL_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a term as holder ended.
enum TermEnd {
    Lost,
    Stopping,
    /// The Events watch ended while ringtail was not stopping (a bug, or the runtime dying).
    ShipEnded,
}

/// Campaigns for the Lease, ships Events while holding it, and records acked positions on it,
/// until ringtail stops; then records the last position and releases the Lease.
pub async fn run(client: kube::Client, plan: Plan, stop: Arc<Stop>) {
    let Plan {
        lease,
        max_line,
        ring,
        mut acks,
        finish,
    } = plan;
    // The writer ends once every ring sender is gone: the one kept here is let go as soon as
    // ringtail stops, whatever a Lease call is doing; shippers hold clones only while shipping.
    let ring = Arc::new(Mutex::new(Some(ring)));
    tokio::spawn(drop_on_stop(ring.clone(), stop.clone()));
    let mut elector = Elector::new(client.clone(), lease);
    let mut errors = ErrorLog::new("leases", elector.rbac_hint());
    loop {
        METRICS.events_leader.set(0);
        // Follower: try every retry period.
        loop {
            if stop.stopping() {
                return;
            }
            match call(elector.try_acquire_or_renew(None, true), CALL_TIMEOUT).await {
                Ok(true) => {
                    errors.ok();
                    break;
                }
                Ok(false) => errors.ok(),
                Err(e) => errors.failed("taking the events Lease", &e),
            }
            if !sleep_unless_stopping(RETRY_PERIOD, &stop).await {
                return;
            }
        }
        let Some(tx) = ring.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        METRICS.events_leader.set(1);
        let resume = elector.position();
        log::info!(
            "{}: holding it, shipping Kubernetes Events{}",
            elector.describe(),
            resume
                .as_ref()
                .map(|p| format!(" after resourceVersion {}", p.resource_version))
                .unwrap_or_default()
        );
        let shipper = Shipper::new(max_line, resume);
        let mut ship = tokio::spawn(shipper.ship(client.clone(), tx, stop.clone()));
        let mut pending: Option<EventsPos> = None;
        let mut renewed = Instant::now();
        let mut written = Instant::now();
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                _ = &mut ship => {
                    break if stop.stopping() { TermEnd::Stopping } else { TermEnd::ShipEnded };
                }
                _ = tick.tick() => {}
                changed = acks.changed() => {
                    if changed.is_err() {
                        // The writer is gone: ringtail is stopping.
                        break TermEnd::Stopping;
                    }
                    pending = acks.borrow_and_update().clone();
                    continue;
                }
            }
            if stop.stopping() {
                break TermEnd::Stopping;
            }
            if pending.is_none() && written.elapsed() < RETRY_PERIOD {
                continue;
            }
            written = Instant::now();
            match call(
                elector.try_acquire_or_renew(pending.as_ref(), false),
                CALL_TIMEOUT,
            )
            .await
            {
                Ok(true) => {
                    errors.ok();
                    renewed = Instant::now();
                    pending = None;
                }
                Ok(false) => break TermEnd::Lost,
                Err(e) => {
                    errors.failed("renewing the events Lease", &e);
                    if renewed.elapsed() > RENEW_DEADLINE {
                        break TermEnd::Lost;
                    }
                }
            }
        };
        match end {
            TermEnd::Stopping => {
                finish_term(&mut elector, &mut acks, &finish, &mut errors).await;
                return;
            }
            TermEnd::Lost => {
                ship.abort();
                METRICS.events_leader.set(0);
                log::warn!(
                    "{}: lost it; another pod ships Kubernetes Events now",
                    elector.describe()
                );
            }
            TermEnd::ShipEnded => {
                log::error!(
                    "{}: the Events watch ended unexpectedly; releasing the Lease and \
                     campaigning again",
                    elector.describe()
                );
                if let Err(e) = call(elector.release(), CALL_TIMEOUT).await {
                    errors.failed("releasing the events Lease", &e);
                }
            }
        }
    }
}

/// Stopping while holding the Lease: keep it until the writer's last acks are in (it ends once
/// every ring sender is gone), record them, and release it so another pod takes over at once.
async fn finish_term(
    elector: &mut Elector,
    acks: &mut watch::Receiver<Option<EventsPos>>,
    finish: &Notify,
    errors: &mut ErrorLog,
) {
    let finished = finish.notified();
    tokio::pin!(finished);
    let mut tick = tokio::time::interval(RETRY_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut finished => break,
            _ = tick.tick() => {}
            changed = acks.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        }
        let _ = call(elector.try_acquire_or_renew(None, false), CALL_TIMEOUT).await;
    }
    let last = acks.borrow().clone();
    if let Err(e) = call(
        elector.try_acquire_or_renew(last.as_ref(), false),
        FINAL_CALL_TIMEOUT,
    )
    .await
    {
        errors.failed("recording the last Events position", &e);
    }
    match call(elector.release(), FINAL_CALL_TIMEOUT).await {
        Ok(()) => log::info!("{}: released", elector.describe()),
        Err(e) => errors.failed("releasing the events Lease", &e),
    }
    METRICS.events_leader.set(0);
}

/// A Lease call bounded by `limit`.
async fn call<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
    limit: Duration,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Sleeps `d` in short steps; false as soon as ringtail is stopping.
async fn sleep_unless_stopping(d: Duration, stop: &Stop) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.stopping() {
            return false;
        }
        tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
    }
    !stop.stopping()
}

async fn drop_on_stop(ring: Arc<Mutex<Option<RingTx>>>, stop: Arc<Stop>) {
    while !stop.stopping() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ring.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// Turns Events into chunks and hands them to the writer.
struct Shipper {
    /// The last Event handed to the writer (or, at the start of a term, the Lease's position).
    last: Option<EventsPos>,
    proc: Processor,
    labels: HashMap<(String, String, String), Arc<LabelSet>>,
    line: String,
    /// Said once that an Event's resourceVersion is not a number.
    warned_rv: bool,
}

/// Label sets kept interned; past this many (a cluster inventing namespaces or kinds), the table
/// starts again.
const MAX_LABEL_SETS: usize = 10_000;

impl Shipper {
    fn new(max_line: usize, last: Option<EventsPos>) -> Shipper {
        Shipper {
            last,
            proc: Processor::new(JsonLine::Raw, max_line),
            labels: HashMap::new(),
            line: String::new(),
            warned_rv: false,
        }
    }

    /// Watches Events cluster-wide and ships them, until ringtail stops.
    async fn ship(mut self, client: kube::Client, ring: RingTx, stop: Arc<Stop>) {
        let api: Api<KubeEvent> = Api::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut errors = ErrorLog::new("events", "the ClusterRole grants events list/watch");
        let relists = METRICS.kube_relists("events");
        let mut listed: Vec<KubeEvent> = Vec::new();
        let mut first_list = true;
        let mut check_stop = tokio::time::interval(Duration::from_millis(200));
        while !stop.stopping() {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = check_stop.tick() => continue,
            };
            match ev {
                None => return,
                Some(Err(e)) => errors.failed("watching Events", &e),
                // `Init` comes before the list is tried: it says nothing of the API.
                Some(Ok(Event::Init)) => listed.clear(),
                Some(Ok(Event::InitApply(e))) => {
                    errors.ok();
                    // Only what is new is kept: a large cluster's list is mostly shipped.
                    if self.is_new(&e) {
                        listed.push(e);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    errors.ok();
                    if !first_list {
                        relists.inc();
                    }
                    first_list = false;
                    listed.sort_by_key(|e| rv_number(e).unwrap_or(u64::MAX));
                    let all = std::mem::take(&mut listed);
                    self.send(all, &ring, &stop).await;
                }
                Some(Ok(Event::Apply(e))) => {
                    errors.ok();
                    if self.is_new(&e) {
                        self.send(vec![e], &ring, &stop).await;
                    }
                }
                Some(Ok(Event::Delete(_))) => errors.ok(),
            }
        }
    }

    /// False (and counted) for an Event at or before the last one shipped. An Event whose
    /// resourceVersion is not a number (no API server does that) cannot be placed: it is shipped,
    /// and never becomes the position.
    fn is_new(&mut self, e: &KubeEvent) -> bool {
        let (Some(rv), Some(last)) = (rv_number(e), self.last_rv()) else {
            return true;
        };
        if rv <= last {
            METRICS.events_skipped.inc();
            return false;
        }
        true
    }

    fn last_rv(&self) -> Option<u64> {
        self.last.as_ref()?.resource_version.parse().ok()
    }

    /// Ships `events` (already filtered by [`Shipper::is_new`]) in chunks, each carrying the
    /// position of its last Event with a numeric resourceVersion.
    async fn send(&mut self, events: Vec<KubeEvent>, ring: &RingTx, stop: &Stop) {
        let mut chunk: Option<Chunk> = None;
        for e in &events {
            let Some(r) = render(e, &mut self.line) else {
                continue;
            };
            let labels = self.label_set(&r);
            let c = chunk.get_or_insert_with(|| ring.chunk(labels.clone()));
            let idx = c.label_index(&labels);
            let before = self.proc.counts;
            self.proc.fielded_line(
                c,
                idx,
                r.ts_ns,
                self.line.as_bytes(),
                &[
                    (MetaKey::Name, Some(r.name.as_bytes())),
                    (MetaKey::Reason, Some(r.reason.as_bytes())),
                    (MetaKey::Node, Some(r.node.as_bytes())),
                ],
            );
            METRICS.add_line_counts(before, self.proc.counts);
            METRICS.events_shipped.inc();
            if rv_number(e).is_some() {
                let pos = EventsPos {
                    resource_version: e.metadata.resource_version.clone().unwrap_or_default(),
                    ts_ns: r.ts_ns,
                };
                c.advance = Some(Advance::Events(pos.clone()));
                self.last = Some(pos);
            } else if !self.warned_rv {
                self.warned_rv = true;
                log::warn!(
                    "Event {:?} has resourceVersion {:?}, not a number; it is shipped but cannot \
                     be a resume position (a relist may ship such Events again)",
                    e.metadata.name,
                    e.metadata.resource_version
                );
            }
            if c.entries.len() >= CHUNK_EVENTS {
                if let Some(full) = chunk.take() {
                    if !hand_off(full, ring, stop).await {
                        return;
                    }
                }
            }
        }
        if let Some(c) = chunk {
            hand_off(c, ring, stop).await;
        }
    }

    fn label_set(&mut self, r: &Rendered) -> Arc<LabelSet> {
        if self.labels.len() >= MAX_LABEL_SETS {
            self.labels.clear();
        }
        let key = (r.namespace.clone(), r.kind.clone(), r.type_.clone());
        if !self.labels.contains_key(&key) {
            METRICS.streams("events", self.labels.len() + 1);
        }
        self.labels
            .entry(key)
            .or_insert_with(|| {
                LabelSet::new([
                    ("source", "kubernetes-events".to_string()),
                    ("job", "kubernetes-events".to_string()),
                    ("namespace", r.namespace.clone()),
                    ("kind", r.kind.clone()),
                    ("type", r.type_.clone()),
                ])
            })
            .clone()
    }
}

/// Puts a chunk in the ring, waiting on a timer while it is full (Loki slow or down) so the
/// Lease keeps being renewed. False when ringtail stops first: the chunk is not acked, so its
/// Events are shipped again by the next holder.
async fn hand_off(chunk: Chunk, ring: &RingTx, stop: &Stop) -> bool {
    let mut chunk = chunk;
    loop {
        match ring.try_send(chunk) {
            Ok(None) => return true,
            Err(_) => return false,
            Ok(Some(c)) => {
                if stop.stopping() {
                    ring.recycle(c);
                    return false;
                }
                chunk = c;
                tokio::time::sleep(RING_RETRY).await;
            }
        }
    }
}

fn rv_number(e: &KubeEvent) -> Option<u64> {
    e.metadata.resource_version.as_deref()?.parse().ok()
}

/// What an Event becomes (contract §1): labels, structured metadata, timestamp; the line is
/// written into the caller's buffer.
#[derive(Debug, PartialEq)]
struct Rendered {
    namespace: String,
    kind: String,
    type_: String,
    name: String,
    reason: String,
    node: String,
    ts_ns: i64,
}

/// Renders an Event; `None` (counted, logged at debug) for one without an involved object name,
/// which Alloy also refuses.
fn render(e: &KubeEvent, line: &mut String) -> Option<Rendered> {
    let obj = &e.involved_object;
    let name = obj.name.clone().unwrap_or_default();
    if name.is_empty() {
        METRICS.file_event("event_without_object");
        log::debug!(
            "Event {:?} has no involvedObject.name; not shipped",
            e.metadata.name
        );
        return None;
    }
    let kind = obj.kind.clone().unwrap_or_default();
    let source = e.source.as_ref();
    let source_host = source.and_then(|s| s.host.clone()).unwrap_or_default();
    let node = if kind == "Node" {
        name.clone()
    } else {
        source_host.clone()
    };
    let ts = e
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| {
            e.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let ts_ns = match ts {
        Some(t) => i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX),
        None => crate::timefmt::now_ns(),
    };
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    line.clear();
    line.push('{');
    let field = |line: &mut String, key: &str, value: &str| {
        if value.is_empty() {
            return;
        }
        if line.len() > 1 {
            line.push(',');
        }
        push_json_str(line, key);
        line.push(':');
        push_json_str(line, value);
    };
    field(line, "name", &name);
    field(line, "kind", &kind);
    field(line, "action", &s(&e.action));
    field(line, "objectAPIversion", &s(&obj.api_version));
    field(line, "objectRV", &s(&obj.resource_version));
    field(line, "eventRV", &s(&e.metadata.resource_version));
    field(line, "reportinginstance", &s(&e.reporting_instance));
    field(line, "reportingcontroller", &s(&e.reporting_component));
    field(
        line,
        "sourcecomponent",
        &source.and_then(|s| s.component.clone()).unwrap_or_default(),
    );
    field(line, "sourcehost", &source_host);
    field(line, "reason", &s(&e.reason));
    field(line, "type", &s(&e.type_));
    if let Some(count) = e.count.filter(|&c| c != 0) {
        if line.len() > 1 {
            line.push(',');
        }
        line.push_str("\"count\":");
        line.push_str(&count.to_string());
    }
    field(line, "msg", &s(&e.message));
    line.push('}');
    Some(Rendered {
        namespace: s(&obj.namespace),
        kind,
        type_: s(&e.type_),
        name,
        reason: s(&e.reason),
        node,
        ts_ns,
    })
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires; writing a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> KubeEvent {
        serde_json::from_value(json).expect("a valid Event")
    }

    #[test]
    fn a_kubelet_warning_renders_as_the_contract_says() {
        let e = event(serde_json::json!({
            "metadata": {"name": "web-1.17f", "namespace": "emojivoto", "resourceVersion": "812",
                         "creationTimestamp": "2026-11-25T10:00:00Z"},
            "involvedObject": {"kind": "Pod", "namespace": "emojivoto", "name": "web-1",
                               "apiVersion": "v1", "resourceVersion": "700", "uid": "u1"},
            "reason": "BackOff", "message": "Back-off restarting failed container \"web\"",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2026-11-25T10:00:00Z", "lastTimestamp": "2026-11-25T10:05:00Z",
            "count": 7, "type": "Warning"
        }));
        let mut line = String::new();
        let r = render(&e, &mut line).expect("rendered");
        assert_eq!(
            line,
            r#"{"name":"web-1","kind":"Pod","objectAPIversion":"v1","objectRV":"700","eventRV":"812","sourcecomponent":"kubelet","sourcehost":"node-a","reason":"BackOff","type":"Warning","count":7,"msg":"Back-off restarting failed container \"web\""}"#
        );
        assert_eq!(
            r,
            Rendered {
                namespace: "emojivoto".into(),
                kind: "Pod".into(),
                type_: "Warning".into(),
                name: "web-1".into(),
                reason: "BackOff".into(),
                node: "node-a".into(),
                ts_ns: 1_795_601_100_000_000_000,
            }
        );
    }

    #[test]
    fn timestamps_fall_back_in_the_contract_order() {
        let base = serde_json::json!({
            "metadata": {"name": "e", "namespace": "ns", "resourceVersion": "1",
                         "creationTimestamp": "2026-11-25T10:00:01Z"},
            "involvedObject": {"kind": "Node", "name": "node-b"},
            "reportingComponent": "kubelet", "reportingInstance": "node-b",
            "action": "Rebooted"
        });
        let ts = |extra: serde_json::Value| {
            let mut j = base.clone();
            for (k, v) in extra.as_object().expect("object") {
                j[k] = v.clone();
            }
            let mut line = String::new();
            render(&event(j), &mut line).expect("rendered").ts_ns
        };
        let sec = |s: i64| 1_795_600_800_000_000_000 + s * 1_000_000_000;
        assert_eq!(ts(serde_json::json!({})), sec(1));
        assert_eq!(
            ts(serde_json::json!({"eventTime": "2026-11-25T10:00:02.500000Z"})),
            sec(2) + 500_000_000
        );
        assert_eq!(
            ts(
                serde_json::json!({"eventTime": "2026-11-25T10:00:02.000000Z",
                "series": {"count": 3, "lastObservedTime": "2026-11-25T10:00:03.000000Z"}})
            ),
            sec(3)
        );
        assert_eq!(
            ts(serde_json::json!({"lastTimestamp": "2026-11-25T10:00:04Z",
                "series": {"count": 3, "lastObservedTime": "2026-11-25T10:00:03.000000Z"}})),
            sec(4)
        );
        // A Node's events: `node` is the Node's name; empty fields are left out.
        let mut line = String::new();
        let r = render(&event(base), &mut line).expect("rendered");
        assert_eq!(r.node, "node-b");
        assert_eq!(
            line,
            r#"{"name":"node-b","kind":"Node","action":"Rebooted","eventRV":"1","reportinginstance":"node-b","reportingcontroller":"kubelet"}"#
        );
    }

    #[test]
    fn an_event_without_an_object_name_is_not_shipped() {
        let e = event(serde_json::json!({
            "metadata": {"name": "e", "resourceVersion": "1"},
            "involvedObject": {"kind": "Pod"}
        }));
        assert_eq!(render(&e, &mut String::new()), None);
    }
}
