//! The kube API side end to end: the real binary, pointed by a kubeconfig at a fake API server
//! that speaks the real list/watch wire format (`support::kubeapi`), shipping to a receiver that
//! decodes what Loki would.
//!
//! Pod metadata: `app`/`app_name` on pod lines, static pods by config hash, a file before its
//! pod, a deleted pod's last lines, the API down. Events: JSON lines with the contract's labels,
//! metadata and timestamps; one shipper per cluster through the Lease, failover, resume from the
//! Lease annotation, and a `410 Gone` relist, each with exactly-once counts.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const LEASE_NS: &str = "ringtail";
const LEASE_NAME: &str = "ringtail-events";

/// One node: its pod log tree, data dir and metrics port; the API and Loki may be shared.
struct Node {
    dir: PathBuf,
    name: String,
    port: u16,
}

impl Node {
    fn new(root: &Path, name: &str) -> Node {
        let dir = root.join(name);
        fs::create_dir_all(dir.join("pods")).unwrap();
        Node {
            dir,
            name: name.to_string(),
            port: free_port(),
        }
    }

    fn pods(&self) -> PathBuf {
        self.dir.join("pods")
    }

    /// Starts ringtail with pods and/or events on, `extra` lines added under `logs.pods`.
    fn start(
        &self,
        api: &FakeKubeApi,
        rx: &LokiReceiver,
        pods: bool,
        events: bool,
        extra: &str,
    ) -> Ringtail {
        let kubeconfig = self.dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let mut cfg = pods_only_config(&self.dir.join("data"), &self.pods(), &rx.url(), self.port)
            .replace("node_name: test-node\n", "")
            .replace(
                "    read_from: beginning\n",
                &format!("    read_from: beginning\n{extra}"),
            );
        if !pods {
            cfg = cfg.replace("  pods:\n    enabled: true", "  pods:\n    enabled: false");
        }
        if events {
            cfg = cfg.replace(
                "  events:\n    enabled: false\n",
                &format!(
                    "  events:\n    enabled: true\n    lease_namespace: {LEASE_NS}\n    lease_name: {LEASE_NAME}\n"
                ),
            );
        }
        let mut rt = Ringtail::start_with_env(
            &cfg,
            &self.dir.join("run"),
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("NODE_NAME", &self.name),
            ],
        );
        assert!(
            rt.wait_ready(self.port, Duration::from_secs(10)),
            "{}",
            rt.logs()
        );
        rt
    }
}

fn pod_labels(
    ns: &str,
    pod: &str,
    container: &str,
    app: Option<(&str, &str)>,
) -> BTreeMap<String, String> {
    let job = format!("{ns}/{container}");
    let mut l = map(&[
        ("namespace", ns),
        ("pod", pod),
        ("container", container),
        ("node", "node-a"),
        ("job", &job),
    ]);
    if let Some((app, app_name)) = app {
        if !app.is_empty() {
            l.insert("app".into(), app.into());
        }
        if !app_name.is_empty() {
            l.insert("app_name".into(), app_name.into());
        }
    }
    l
}

/// Writes `lines` to a container log and returns what Loki should store for them.
fn write(
    log: &mut ContainerLog,
    ns: &str,
    pod: &str,
    app: Option<(&str, &str)>,
    lines: &[&str],
) -> Vec<Expected> {
    let labels = pod_labels(ns, pod, log.name(), app);
    lines
        .iter()
        .map(|l| {
            let ts = log.write_line(Stream::Stdout, l);
            (
                labels.clone(),
                ts,
                l.to_string(),
                map(&[("stream", "stdout")]),
            )
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pod_labels_reach_their_lines_static_pods_too() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, rx) = (FakeKubeApi::start(), LokiReceiver::start());
    let node = Node::new(tmp.path(), "node-a");
    api.put_pod(FakeKubeApi::pod(
        "emojivoto",
        "web-1",
        "u-web",
        "node-a",
        &[("app", "web"), ("app.kubernetes.io/name", "emoji-web")],
        &[],
    ));
    // A mirror pod: its log directory carries the config hash, not its UID.
    api.put_pod(FakeKubeApi::pod(
        "kube-system",
        "kube-apiserver-node-a",
        "u-mirror",
        "node-a",
        &[
            ("app.kubernetes.io/name", "kube-apiserver"),
            ("tier", "control-plane"),
        ],
        &[
            ("kubernetes.io/config.hash", "5e7f3e2c9d0a4b1c"),
            ("kubernetes.io/config.mirror", "5e7f3e2c9d0a4b1c"),
        ],
    ));
    api.put_pod(FakeKubeApi::pod(
        "default",
        "plain",
        "u-plain",
        "node-a",
        &[],
        &[],
    ));
    // Another node's pod with the same UID layout: not this node's, never asked for.
    api.put_pod(FakeKubeApi::pod(
        "emojivoto",
        "web-2",
        "u-web-2",
        "node-b",
        &[("app", "web")],
        &[],
    ));

    let mut want = Vec::new();
    let web = PodDir::new(&node.pods(), "emojivoto", "web-1", "u-web");
    let mut c = web.container("web");
    want.extend(write(
        &mut c,
        "emojivoto",
        "web-1",
        Some(("web", "emoji-web")),
        &["a", "b"],
    ));
    let stat = PodDir::new(
        &node.pods(),
        "kube-system",
        "kube-apiserver-node-a",
        "5e7f3e2c9d0a4b1c",
    );
    let mut c = stat.container("kube-apiserver");
    want.extend(write(
        &mut c,
        "kube-system",
        "kube-apiserver-node-a",
        Some(("", "kube-apiserver")),
        &["I1125 started"],
    ));
    let plain = PodDir::new(&node.pods(), "default", "plain", "u-plain");
    let mut c = plain.container("main");
    want.extend(write(&mut c, "default", "plain", None, &["no labels"]));

    let started = Instant::now();
    let mut rt = node.start(&api, &rx, true, false, "");
    assert!(rx.wait_for_entries(want.len(), WAIT), "{}", rt.logs());
    // Known pods never wait for metadata (the bound leaves room for a loaded CI machine).
    assert!(started.elapsed() < Duration::from_secs(10));
    rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&rx, &want);
    let pods_requests: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.contains("/api/v1/pods"))
        .collect();
    assert!(!pods_requests.is_empty());
    assert!(
        pods_requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{pods_requests:?}"
    );
    let m = metrics(node.port);
    assert_eq!(
        metric_value(&m, "ringtail_kube_up{resource=\"pods\"}"),
        Some(1.0),
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn a_file_before_its_pod_waits_then_is_relabelled() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, rx) = (FakeKubeApi::start(), LokiReceiver::start());
    let node = Node::new(tmp.path(), "node-a");
    let mut rt = node.start(
        &api,
        &rx,
        true,
        false,
        "    metadata: { wait: 2s, grace: 60s }\n",
    );
    let mut want = Vec::new();

    // A: its pod arrives within the wait; its first lines already carry the labels.
    let a = PodDir::new(&node.pods(), "shop", "cart-1", "u-cart");
    let mut ca = a.container("cart");
    want.extend(write(
        &mut ca,
        "shop",
        "cart-1",
        Some(("cart", "")),
        &["a1", "a2"],
    ));
    std::thread::sleep(Duration::from_millis(700));
    api.put_pod(FakeKubeApi::pod(
        "shop",
        "cart-1",
        "u-cart",
        "node-a",
        &[("app", "cart")],
        &[],
    ));
    assert!(rx.wait_for_entries(2, WAIT), "{}", rt.logs());
    assert_exactly(&rx, &want);

    // B: its pod comes 4 s late; the lines go without `app` after the 2 s wait, then the next
    // ones carry the full label set.
    let b = PodDir::new(&node.pods(), "shop", "pay-1", "u-pay");
    let mut cb = b.container("pay");
    let t_b = Instant::now();
    want.extend(write(&mut cb, "shop", "pay-1", None, &["b1", "b2"]));
    assert!(rx.wait_for_entries(4, WAIT), "{}", rt.logs());
    let waited = t_b.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert_exactly(&rx, &want);
    api.put_pod(FakeKubeApi::pod(
        "shop",
        "pay-1",
        "u-pay",
        "node-a",
        &[("app", "pay"), ("app.kubernetes.io/name", "payments")],
        &[],
    ));
    let m = || metrics(node.port);
    wait_until("the relabel", WAIT, || {
        metric_value(&m(), "ringtail_file_events_total{event=\"relabelled\"}") == Some(1.0)
    });
    want.extend(write(
        &mut cb,
        "shop",
        "pay-1",
        Some(("pay", "payments")),
        &["b3"],
    ));
    assert!(rx.wait_for_entries(5, WAIT), "{}", rt.logs());
    rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&rx, &want);
    assert_eq!(
        metric_value(
            &m(),
            "ringtail_file_events_total{event=\"without_metadata\"}"
        ),
        Some(1.0)
    );
    stop(&mut rt);
}

#[test]
fn a_deleted_pod_keeps_its_labels_for_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, rx) = (FakeKubeApi::start(), LokiReceiver::start());
    let node = Node::new(tmp.path(), "node-a");
    api.put_pod(FakeKubeApi::pod(
        "batch",
        "job-1",
        "u-job",
        "node-a",
        &[("app", "job")],
        &[],
    ));
    let mut rt = node.start(
        &api,
        &rx,
        true,
        false,
        "    metadata: { wait: 1s, grace: 4s }\n",
    );
    let dir = PodDir::new(&node.pods(), "batch", "job-1", "u-job");
    let mut main = dir.container("main");
    let mut want = write(&mut main, "batch", "job-1", Some(("job", "")), &["working"]);
    assert!(rx.wait_for_entries(1, WAIT), "{}", rt.logs());

    // Deleted in the API while its last lines are still being written and read, and a sidecar's
    // file appears afterwards: within the grace period both keep the labels.
    api.delete_pod("batch", "job-1");
    std::thread::sleep(Duration::from_millis(300));
    want.extend(write(
        &mut main,
        "batch",
        "job-1",
        Some(("job", "")),
        &["done"],
    ));
    let mut side = dir.container("sidecar");
    want.extend(write(
        &mut side,
        "batch",
        "job-1",
        Some(("job", "")),
        &["flushing"],
    ));
    assert!(rx.wait_for_entries(3, WAIT), "{}", rt.logs());
    rx.wait_quiet(Duration::from_millis(300));
    assert_exactly(&rx, &want);

    // Past the grace period the pod is forgotten: a file found now waits, then goes without.
    std::thread::sleep(Duration::from_secs(5));
    let mut late = dir.container("late");
    want.extend(write(&mut late, "batch", "job-1", None, &["after grace"]));
    assert!(rx.wait_for_entries(4, WAIT), "{}", rt.logs());
    rx.wait_quiet(Duration::from_millis(300));
    assert_exactly(&rx, &want);
    stop(&mut rt);
}

#[test]
fn with_the_api_down_logs_still_flow_and_labels_come_back_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, rx) = (FakeKubeApi::start(), LokiReceiver::start());
    let node = Node::new(tmp.path(), "node-a");
    api.put_pod(FakeKubeApi::pod(
        "web",
        "front-1",
        "u-front",
        "node-a",
        &[("app", "front")],
        &[],
    ));
    api.set_down(true);
    let dir = PodDir::new(&node.pods(), "web", "front-1", "u-front");
    let mut c = dir.container("nginx");
    let mut want = write(&mut c, "web", "front-1", None, &["GET / 200", "GET /a 200"]);
    let mut rt = node.start(&api, &rx, true, false, "");
    assert!(rx.wait_for_entries(2, WAIT), "{}", rt.logs());
    want.extend(write(&mut c, "web", "front-1", None, &["GET /b 200"]));
    assert!(rx.wait_for_entries(3, WAIT), "{}", rt.logs());
    assert_exactly(&rx, &want);
    let m = metrics(node.port);
    assert_eq!(
        metric_value(&m, "ringtail_kube_up{resource=\"pods\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric_value(&m, "ringtail_kube_errors_total{resource=\"pods\"}").unwrap_or(0.0) >= 1.0
    );
    // Logged once, not once per retry.
    let warned = rt.stderr_text().matches("kube API (pods)").count();
    assert_eq!(warned, 1, "{}", rt.stderr_text());

    api.set_down(false);
    wait_until("the pods watch to recover", Duration::from_secs(60), || {
        metric_value(&metrics(node.port), "ringtail_kube_up{resource=\"pods\"}") == Some(1.0)
    });
    wait_until("the relabel", WAIT, || {
        metric_value(
            &metrics(node.port),
            "ringtail_file_events_total{event=\"relabelled\"}",
        ) == Some(1.0)
    });
    want.extend(write(
        &mut c,
        "web",
        "front-1",
        Some(("front", "")),
        &["GET /c 200"],
    ));
    assert!(rx.wait_for_entries(4, WAIT), "{}", rt.logs());
    rx.wait_quiet(Duration::from_millis(300));
    assert_exactly(&rx, &want);
    assert!(
        rt.stderr_text().contains("works again"),
        "{}",
        rt.stderr_text()
    );
    stop(&mut rt);
}

// ---- Events ----

fn rfc3339(secs: i64) -> String {
    format_rfc3339nano(secs * 1_000_000_000, 0)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A kubelet Warning about a pod, last seen `ago` seconds ago, counted `count` times.
fn backoff(name: &str, ago: i64, count: i64) -> Value {
    let mut e = FakeKubeApi::event(
        "emojivoto",
        name,
        ("Pod", "web-1", "emojivoto"),
        "BackOff",
        "Back-off restarting failed container \"web\"",
        "Warning",
    );
    e["firstTimestamp"] = json!(rfc3339(now_secs() - ago - 60));
    e["lastTimestamp"] = json!(rfc3339(now_secs() - ago));
    e["count"] = json!(count);
    e["involvedObject"]["resourceVersion"] = json!("700");
    e
}

/// What Loki should store for an Event: the oracle of contract §1, written independently of
/// ringtail's renderer.
fn expected_event(ev: &Value, rv: &str) -> Expected {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let obj = &ev["involvedObject"];
    let kind = s(&obj["kind"]);
    let mut line = serde_json::Map::new();
    let mut fields: Vec<(&str, String)> = vec![
        ("name", s(&obj["name"])),
        ("kind", kind.clone()),
        ("action", s(&ev["action"])),
        ("objectAPIversion", s(&obj["apiVersion"])),
        ("objectRV", s(&obj["resourceVersion"])),
        ("eventRV", rv.to_string()),
        ("reportinginstance", s(&ev["reportingInstance"])),
        ("reportingcontroller", s(&ev["reportingComponent"])),
        ("sourcecomponent", s(&ev["source"]["component"])),
        ("sourcehost", s(&ev["source"]["host"])),
        ("reason", s(&ev["reason"])),
        ("type", s(&ev["type"])),
    ];
    fields.retain(|(_, v)| !v.is_empty());
    let mut text = String::from("{");
    let mut push = |k: &str, v: String| {
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&serde_json::to_string(k).unwrap());
        text.push(':');
        text.push_str(&v);
    };
    for (k, v) in fields {
        line.insert(k.into(), json!(v));
        push(k, serde_json::to_string(&v).unwrap());
    }
    if let Some(n) = ev["count"].as_i64().filter(|&n| n != 0) {
        push("count", n.to_string());
    }
    if !s(&ev["message"]).is_empty() {
        push("msg", serde_json::to_string(&s(&ev["message"])).unwrap());
    }
    text.push('}');
    let ts = [
        &ev["lastTimestamp"],
        &ev["series"]["lastObservedTime"],
        &ev["eventTime"],
        &ev["metadata"]["creationTimestamp"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().and_then(parse_rfc3339nano))
    .expect("an event timestamp");
    let mut labels = map(&[
        ("source", "kubernetes-events"),
        ("job", "kubernetes-events"),
    ]);
    for (k, v) in [
        ("namespace", s(&obj["namespace"])),
        ("kind", kind.clone()),
        ("type", s(&ev["type"])),
    ] {
        if !v.is_empty() {
            labels.insert(k.into(), v);
        }
    }
    let node = if kind == "Node" {
        s(&obj["name"])
    } else {
        s(&ev["source"]["host"])
    };
    let mut meta = BTreeMap::new();
    for (k, v) in [
        ("name", s(&obj["name"])),
        ("reason", s(&ev["reason"])),
        ("node", node),
    ] {
        if !v.is_empty() {
            meta.insert(k.to_string(), v);
        }
    }
    (labels, ts, text, meta)
}

/// Stores an event and returns what Loki should get for it.
fn put(api: &FakeKubeApi, ev: Value) -> Expected {
    let rv = api.put_event(ev.clone());
    let stored = api.event_object(
        ev["metadata"]["namespace"].as_str().unwrap(),
        ev["metadata"]["name"].as_str().unwrap(),
    );
    expected_event(&stored, &rv)
}

/// The resourceVersion of the newest event among `want` (its `eventRV`).
fn last_rv(want: &[Expected]) -> String {
    want.iter()
        .filter_map(|(_, _, line, _)| {
            let v: Value = serde_json::from_str(line).ok()?;
            v["eventRV"].as_str()?.parse::<u64>().ok()
        })
        .max()
        .expect("an event")
        .to_string()
}

fn lease_position(api: &FakeKubeApi) -> Option<Value> {
    let lease = api.lease(LEASE_NS, LEASE_NAME)?;
    let raw = lease["metadata"]["annotations"]["ringtail.io/events-position"].as_str()?;
    serde_json::from_str(raw).ok()
}

fn lease_holder(api: &FakeKubeApi) -> String {
    api.lease(LEASE_NS, LEASE_NAME)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
        .unwrap_or_default()
}

fn wait_for_position(api: &FakeKubeApi, rv: &str) {
    wait_until(
        &format!("the Lease annotation at resourceVersion {rv}"),
        WAIT,
        || lease_position(api).is_some_and(|p| p["resourceVersion"] == rv),
    );
}

#[test]
fn events_are_json_lines_with_their_labels_and_timestamps_and_resume_from_the_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, rx) = (FakeKubeApi::start(), LokiReceiver::start());
    let node = Node::new(tmp.path(), "node-a");
    let mut want = vec![put(&api, backoff("web-1.a1", 120, 3))];
    // A new-style event: only eventTime (and a series), no lastTimestamp.
    let mut sched = FakeKubeApi::event(
        "emojivoto",
        "web-1.b2",
        ("Pod", "web-1", "emojivoto"),
        "Scheduled",
        "Successfully assigned emojivoto/web-1 to node-a",
        "Normal",
    );
    sched["firstTimestamp"] = Value::Null;
    sched["lastTimestamp"] = Value::Null;
    sched["count"] = Value::Null;
    sched["source"] = json!({});
    sched["eventTime"] = json!(format!(
        "{}.250000Z",
        rfc3339(now_secs() - 30).trim_end_matches('Z')
    ));
    sched["reportingComponent"] = json!("default-scheduler");
    sched["reportingInstance"] = json!("default-scheduler-cp-1");
    sched["action"] = json!("Binding");
    want.push(put(&api, sched));
    // A Node's event: cluster-scoped object, no namespace label; `node` is the Node's name.
    let mut reboot = FakeKubeApi::event(
        "default",
        "node-b.c3",
        ("Node", "node-b", ""),
        "Rebooted",
        "Node node-b has been rebooted, boot id: 1f2e",
        "Warning",
    );
    reboot["lastTimestamp"] = json!(rfc3339(now_secs() - 10));
    want.push(put(&api, reboot));

    let mut rt = node.start(&api, &rx, false, true, "");
    assert!(rx.wait_for_entries(3, WAIT), "{}", rt.logs());
    rx.wait_quiet(Duration::from_millis(500));
    assert_exactly(&rx, &want);
    assert_eq!(lease_holder(&api), "node-a");

    // An update with a new count is shipped again; the Lease records the last acked one.
    let again = put(&api, backoff("web-1.a1", 5, 4));
    want.push(again);
    assert!(rx.wait_for_entries(4, WAIT), "{}", rt.logs());
    wait_for_position(&api, &last_rv(&want));
    let m = metrics(node.port);
    assert_eq!(metric_value(&m, "ringtail_events_leader"), Some(1.0), "{m}");
    assert_eq!(
        metric_value(&m, "ringtail_events_shipped_total"),
        Some(4.0),
        "{m}"
    );

    // A restart resumes from the Lease: only what is new is shipped. SIGTERM releases the Lease.
    stop(&mut rt);
    assert_eq!(
        lease_holder(&api),
        "",
        "a stopped holder releases the Lease"
    );
    want.push(put(&api, backoff("web-1.d4", 1, 1)));
    let mut rt = node.start(&api, &rx, false, true, "");
    assert!(rx.wait_for_entries(5, WAIT), "{}", rt.logs());
    rx.wait_quiet(Duration::from_secs(1));
    assert_exactly(&rx, &want);
    let m = metrics(node.port);
    assert_eq!(
        metric_value(&m, "ringtail_events_skipped_total"),
        Some(3.0),
        "{m}"
    );
    stop(&mut rt);
}

#[test]
fn two_ringtails_ship_each_event_once_and_the_other_takes_over() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, rx) = (FakeKubeApi::start(), LokiReceiver::start());
    let a = Node::new(tmp.path(), "node-a");
    let b = Node::new(tmp.path(), "node-b");
    let mut want: Vec<Expected> = (0..5)
        .map(|i| put(&api, backoff(&format!("e{i}"), 100 - i, 1)))
        .collect();
    let mut ra = a.start(&api, &rx, false, true, "");
    let mut rb = b.start(&api, &rx, false, true, "");
    assert!(rx.wait_for_entries(5, WAIT), "{}\n{}", ra.logs(), rb.logs());
    for i in 5..8 {
        want.push(put(&api, backoff(&format!("e{i}"), 100 - i, 1)));
    }
    assert!(rx.wait_for_entries(8, WAIT));
    wait_for_position(&api, &last_rv(&want));
    rx.wait_quiet(Duration::from_secs(1));
    assert_exactly(&rx, &want);
    let holder = lease_holder(&api);
    let (leader, follower, follower_node) = match holder.as_str() {
        "node-a" => (&mut ra, &mut rb, &b),
        "node-b" => (&mut rb, &mut ra, &a),
        other => panic!("holder {other:?}"),
    };
    assert_eq!(
        metric_value(&metrics(follower_node.port), "ringtail_events_leader"),
        Some(0.0)
    );

    // The leader dies without releasing; what happens meanwhile is shipped by the other, once.
    leader.kill9();
    let killed = Instant::now();
    for i in 8..11 {
        want.push(put(&api, backoff(&format!("e{i}"), 100 - i, 1)));
    }
    // An event shipped before is counted again while no one holds the Lease: its new count is
    // shipped.
    want.push(put(&api, backoff("e0", 2, 2)));
    assert!(
        rx.wait_for_entries(12, Duration::from_secs(40)),
        "{}",
        follower.logs()
    );
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(20), "failover took {took:?}");
    eprintln!("failover: the new holder shipped {took:?} after the kill");
    rx.wait_quiet(Duration::from_secs(1));
    assert_exactly(&rx, &want);
    assert_ne!(lease_holder(&api), holder);
    let m = metrics(follower_node.port);
    assert_eq!(metric_value(&m, "ringtail_events_leader"), Some(1.0), "{m}");
    // Its list held e1..e7 as already shipped (e0 was updated).
    assert_eq!(
        metric_value(&m, "ringtail_events_skipped_total"),
        Some(7.0),
        "{m}"
    );
    // A holder stops as fast as any pod, and releases the Lease.
    let t = Instant::now();
    stop(follower);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(lease_holder(&api), "");
}

#[test]
fn a_410_gone_relists_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, rx) = (FakeKubeApi::start(), LokiReceiver::start());
    let node = Node::new(tmp.path(), "node-a");
    let mut want: Vec<Expected> = (0..4)
        .map(|i| put(&api, backoff(&format!("g{i}"), 50 - i, 1)))
        .collect();
    let mut rt = node.start(&api, &rx, false, true, "");
    assert!(rx.wait_for_entries(4, WAIT), "{}", rt.logs());
    // The history the watch resumes from is compacted: its reconnect gets 410 and lists again.
    // An event written meanwhile is in that list, and shipped once.
    api.expire_history();
    want.push(put(&api, backoff("g-gap", 2, 1)));
    wait_until("the relist", WAIT, || {
        metric_value(
            &metrics(node.port),
            "ringtail_kube_watch_restarts_total{resource=\"events\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    want.push(put(&api, backoff("g4", 1, 1)));
    assert!(rx.wait_for_entries(6, WAIT), "{}", rt.logs());
    rx.wait_quiet(Duration::from_secs(1));
    assert_exactly(&rx, &want);
    let m = metrics(node.port);
    assert_eq!(
        metric_value(&m, "ringtail_events_skipped_total"),
        Some(4.0),
        "{m}"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/events?") && !r.contains("watch=")),
        "a list after the 410"
    );
    stop(&mut rt);
}
