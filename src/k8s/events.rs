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
use std::sync::Arc;
use std::time::Duration;

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

/// Campaigns for the Lease, ships Events while holding it, and records acked positions on it,
/// until ringtail stops; then records the last position and releases the Lease.
pub async fn run(client: kube::Client, plan: Plan, stop: &Stop) {
    let Plan {
        lease,
        max_line,
        ring,
        mut acks,
        finish,
    } = plan;
    let mut elector = Elector::new(client.clone(), lease);
    let mut errors = ErrorLog::new("leases");
    let mut shipper = Shipper::new(max_line);
    'campaign: loop {
        METRICS.events_leader.set(0);
        // Follower: try every retry period.
        loop {
            if stop.stopping() {
                break 'campaign;
            }
            match elector.try_acquire_or_renew(None).await {
                Ok(true) => {
                    errors.ok();
                    break;
                }
                Ok(false) => errors.ok(),
                Err(e) => errors.failed("taking the events Lease", &e),
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
        METRICS.events_leader.set(1);
        let mut on_lease = elector.position();
        log::info!(
            "{}: holding it, shipping Kubernetes Events{}",
            elector.describe(),
            on_lease
                .as_ref()
                .map(|p| format!(" after resourceVersion {}", p.resource_version))
                .unwrap_or_default()
        );
        shipper.last = on_lease.clone();
        let mut pending: Option<EventsPos> = None;
        let mut renewed = tokio::time::Instant::now();
        let lost = {
            let ship = shipper.ship(client.clone(), &ring, stop);
            tokio::pin!(ship);
            let mut tick = tokio::time::interval(RETRY_PERIOD);
            loop {
                tokio::select! {
                    () = &mut ship => break false,
                    _ = tick.tick() => {}
                    changed = acks.changed() => {
                        if changed.is_err() {
                            break false;
                        }
                        pending = newer(acks.borrow_and_update().clone(), &on_lease);
                        if pending.is_none() {
                            continue;
                        }
                    }
                }
                match elector.try_acquire_or_renew(pending.as_ref()).await {
                    Ok(true) => {
                        errors.ok();
                        renewed = tokio::time::Instant::now();
                        if let Some(p) = pending.take() {
                            on_lease = Some(p);
                        }
                    }
                    Ok(false) => break true,
                    Err(e) => {
                        errors.failed("renewing the events Lease", &e);
                        if renewed.elapsed() > RENEW_DEADLINE {
                            break true;
                        }
                    }
                }
            }
        };
        if lost {
            METRICS.events_leader.set(0);
            log::warn!(
                "{}: lost it; another pod ships Kubernetes Events now",
                elector.describe()
            );
            continue;
        }
        // Stopping: let the writer drain (it ends once every ring sender is gone), keep the Lease
        // until its last acks are in, record them, release.
        drop(ring);
        let finished = finish.notified();
        tokio::pin!(finished);
        let mut tick = tokio::time::interval(RETRY_PERIOD);
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
            let _ = elector.try_acquire_or_renew(None).await;
        }
        let last = newer(acks.borrow().clone(), &on_lease);
        if let Err(e) = elector.try_acquire_or_renew(last.as_ref()).await {
            errors.failed("recording the last Events position", &e);
        }
        match elector.release().await {
            Ok(()) => log::info!("{}: released", elector.describe()),
            Err(e) => errors.failed("releasing the events Lease", &e),
        }
        METRICS.events_leader.set(0);
        return;
    }
}

/// `ack` when it is past what the Lease has.
fn newer(ack: Option<EventsPos>, on_lease: &Option<EventsPos>) -> Option<EventsPos> {
    let ack = ack?;
    match on_lease {
        Some(l) if !lease::is_after(&ack, l) => None,
        _ => Some(ack),
    }
}

/// Turns Events into chunks and hands them to the writer.
struct Shipper {
    /// The last Event handed to the writer (or, at the start of a term, the Lease's position).
    last: Option<EventsPos>,
    proc: Processor,
    labels: HashMap<(String, String, String), Arc<LabelSet>>,
    line: String,
}

/// Label sets kept interned; past this many (a cluster inventing namespaces or kinds), the table
/// starts again.
const MAX_LABEL_SETS: usize = 10_000;

impl Shipper {
    fn new(max_line: usize) -> Shipper {
        Shipper {
            last: None,
            proc: Processor::new(JsonLine::Raw, max_line),
            labels: HashMap::new(),
            line: String::new(),
        }
    }

    /// Watches Events cluster-wide and ships them, until ringtail stops.
    async fn ship(&mut self, client: kube::Client, ring: &RingTx, stop: &Stop) {
        let api: Api<KubeEvent> = Api::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut errors = ErrorLog::new("events");
        let (_, _, relists) = METRICS.kube("events");
        let mut listed: Vec<KubeEvent> = Vec::new();
        let mut first_list = true;
        let mut check_stop = tokio::time::interval(Duration::from_millis(200));
        while !stop.stopping() {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = check_stop.tick() => continue,
            };
            let Some(ev) = ev else { return };
            match ev {
                Err(e) => errors.failed("watching Events", &e),
                // `Init` comes before the list is tried: it says nothing of the API.
                Ok(Event::Init) => listed.clear(),
                Ok(ev) => {
                    errors.ok();
                    match ev {
                        Event::Init => {}
                        Event::InitApply(e) => listed.push(e),
                        Event::InitDone => {
                            if !first_list {
                                relists.inc();
                            }
                            first_list = false;
                            listed.sort_by_key(|e| rv_number(e).unwrap_or(u64::MAX));
                            let all = std::mem::take(&mut listed);
                            self.send(all, ring, stop).await;
                        }
                        Event::Apply(e) => self.send(vec![e], ring, stop).await,
                        Event::Delete(_) => {}
                    }
                }
            }
        }
    }

    /// Ships the Events past `last`, in chunks, each carrying the position of its last Event.
    async fn send(&mut self, events: Vec<KubeEvent>, ring: &RingTx, stop: &Stop) {
        let mut chunk: Option<Chunk> = None;
        for e in &events {
            let Some(r) = render(e, &mut self.line) else {
                continue;
            };
            let pos = EventsPos {
                resource_version: e.metadata.resource_version.clone().unwrap_or_default(),
                ts_ns: r.ts_ns,
            };
            if self
                .last
                .as_ref()
                .is_some_and(|l| !lease::is_after(&pos, l))
            {
                METRICS.events_skipped.inc();
                continue;
            }
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
            c.advance = Some(Advance::Events(pos.clone()));
            self.last = Some(pos);
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
