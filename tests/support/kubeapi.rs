//! `FakeKubeApi`: a fake Kubernetes API server for integration tests.
//!
//! It speaks the API server's wire format over plain HTTP/1.1, so that the real kube-rs client
//! can talk to it through the kubeconfig [`FakeKubeApi::write_kubeconfig`] writes: JSON bodies,
//! `Status` objects for errors, and watches as chunked streams of one JSON event per line, each
//! flushed as its own chunk. Resources: pods and events (core/v1) and leases
//! (coordination.k8s.io/v1), each with list (paged with `limit` and `continue`), watch (with
//! bookmarks), get, create (POST) and replace (PUT, with `resourceVersion` conflicts). That is
//! what ringtail sends: kube-runtime's watcher on pods and events, and its Lease loop of GET,
//! POST and PUT. Pods and events change through the test-facing writes
//! ([`FakeKubeApi::put_pod`], ...).
//!
//! Storage works like etcd behind an API server: one global revision counter gives every write
//! its `resourceVersion`, and every change is kept in a per-resource history. That is what lets a
//! watch resume from any revision, a paged list be served from one consistent snapshot, and
//! [`FakeKubeApi::expire_history`] make old revisions "compacted" (410 Expired) as etcd compaction
//! does. A watch with a field or label selector sees an object that starts matching as ADDED and
//! one that stops matching as DELETED, as the API server's watch cache sends them.
//!
//! Deliberate differences from a real API server:
//! - Not served: PATCH and DELETE (405), `GET /version` and discovery (404), and any resource
//!   but the three above (404). ringtail sends none of them.
//! - No authentication or authorization: the kubeconfig carries a token, any request is served.
//! - No defaulting, admission or validation beyond what the protocol needs (names required,
//!   namespace and name consistent with the URL).
//! - Watch bookmarks come every [`BOOKMARK_INTERVAL`] (a real server sends about one a minute),
//!   so that tests see them quickly.
//! - `sendInitialEvents` (streaming lists) is refused with 422, as by a server without the
//!   `WatchList` feature gate.
//! - [`FakeKubeApi::delete_pod`] removes at once: no graceful deletion, no finalizers.
//! - Field selector values cannot contain escaped `,` or `=`.
//! - The test-facing writes ([`FakeKubeApi::put_pod`], ...) always make a new revision, even
//!   when nothing changed; HTTP writes that change nothing keep the revision, as etcd does.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::cri::format_rfc3339nano;
use super::http::{
    content_length, is_chunked, read_chunked, read_exact_vec, read_head_line, read_headers,
    Accepting,
};

/// Time between BOOKMARK events on a watch that allows them.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// The bearer token of the user in the kubeconfig from [`FakeKubeApi::write_kubeconfig`].
pub const TOKEN: &str = "test-token";

/// A watch without `timeoutSeconds` ends after this long (a real server picks 30 to 60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Largest request body accepted (the API server's limit, 3 MiB); larger gets 413.
const MAX_BODY: usize = 3 << 20;

/// The fake API server. Dropping it closes the listener, ends the watch streams and closes
/// every connection.
pub struct FakeKubeApi {
    shared: Arc<Shared>,
    accepting: Accepting,
}

impl FakeKubeApi {
    /// Listens on `127.0.0.1:0`.
    pub fn start() -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("FakeKubeApi: bind 127.0.0.1:0: {e}"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let sh = Arc::clone(&shared);
        let accepting = Accepting::start(listener, "kubeapi", move |stream, _| {
            serve_conn(&sh, stream)
        });
        FakeKubeApi { shared, accepting }
    }

    /// `http://127.0.0.1:PORT`, the kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.accepting.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.accepting.addr()
    }

    /// Writes a kubeconfig whose current context reaches this server as a user with the bearer
    /// token [`TOKEN`], namespace `default`. Panics when the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) {
        let yaml = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             preferences: {{}}\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user:\n    token: {TOKEN}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        );
        fs::write(path, yaml)
            .unwrap_or_else(|e| panic!("FakeKubeApi: write kubeconfig {}: {e}", path.display()));
    }

    // ---- object builders ----

    /// A Pod as the API server returns it, before it is stored (no `resourceVersion`,
    /// `creationTimestamp`): one container `c` (image `x`), scheduled to `node` and `Running`,
    /// or unscheduled and `Pending` when `node` is empty. Empty label and annotation maps are
    /// left out, as the API server leaves them out.
    pub fn pod(
        ns: &str,
        name: &str,
        uid: &str,
        node: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Value {
        let mut metadata = json!({"name": name, "namespace": ns, "uid": uid});
        if !labels.is_empty() {
            metadata["labels"] = string_map(labels);
        }
        if !annotations.is_empty() {
            metadata["annotations"] = string_map(annotations);
        }
        let mut spec = json!({"containers": [{"name": "c", "image": "x"}]});
        let phase = if node.is_empty() {
            "Pending"
        } else {
            spec["nodeName"] = json!(node);
            "Running"
        };
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": {"phase": phase},
        })
    }

    /// A core/v1 Event as kubelet on `node-a` records it, about `involved` = (kind, name,
    /// namespace); `type_` is `Normal` or `Warning`. The involved object's `uid` and
    /// `resourceVersion` are filled in by [`put_event`](Self::put_event) when it is a stored pod.
    pub fn event(
        ns: &str,
        name: &str,
        involved: (&str, &str, &str),
        reason: &str,
        message: &str,
        type_: &str,
    ) -> Value {
        let (kind, involved_name, involved_ns) = involved;
        let now = now_rfc3339();
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "kind": kind,
                "namespace": involved_ns,
                "name": involved_name,
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": null,
            "reportingComponent": "kubelet",
            "reportingInstance": "node-a",
        })
    }

    // ---- what the cluster does ----

    /// Stores a pod (ADDED when new, else MODIFIED) and returns its new `resourceVersion`.
    /// Panics without `metadata.namespace` and `metadata.name`.
    pub fn put_pod(&self, pod: Value) -> String {
        self.put(Res::Pods, pod)
    }

    /// Deletes a pod (a DELETED event whose object carries the deletion's revision). Panics when
    /// there is no such pod.
    pub fn delete_pod(&self, ns: &str, name: &str) {
        let mut st = self.state();
        if st.remove(Res::Pods, &object_key(ns, name)).is_none() {
            panic!("FakeKubeApi: no pod {ns}/{name} to delete");
        }
        self.shared.cond.notify_all();
    }

    /// Stores an event (ADDED when new, else MODIFIED) and returns its new `resourceVersion`.
    /// When it is about a stored pod, the involved object's `uid` and `resourceVersion`, if
    /// missing, are filled in from the pod, as kubelet records them.
    pub fn put_event(&self, mut ev: Value) -> String {
        let involved = &ev["involvedObject"];
        if involved["kind"] == "Pod" {
            let key = object_key(
                involved["namespace"].as_str().unwrap_or(""),
                involved["name"].as_str().unwrap_or(""),
            );
            let pod = self.state().stores[Res::Pods.index()]
                .objects
                .get(&key)
                .cloned();
            if let Some(pod) = pod {
                for field in ["uid", "resourceVersion"] {
                    if ev["involvedObject"][field]
                        .as_str()
                        .is_none_or(str::is_empty)
                    {
                        ev["involvedObject"][field] = json!(meta_str(&pod, field));
                    }
                }
            }
        }
        self.put(Res::Events, ev)
    }

    /// The stored event (with what the server added). Panics when there is none.
    pub fn event_object(&self, ns: &str, name: &str) -> Value {
        self.stored(Res::Events, ns, name)
            .unwrap_or_else(|| panic!("FakeKubeApi: no event {ns}/{name}"))
    }

    /// The stored lease, if any.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.stored(Res::Leases, ns, name)
    }

    /// The current revision (the `resourceVersion` of the latest write; "0" before any).
    pub fn resource_version(&self) -> String {
        self.state().rv.to_string()
    }

    /// Compacts away every revision handed out so far, as etcd compaction does, and ends every
    /// open watch stream cleanly: a client resuming from any revision it has seen (an object's,
    /// a list's, a BOOKMARK's) gets 410 Expired, in the stream for a watch, as does a list
    /// continuation or an exact list at such a revision. A list made afterwards is at a new
    /// revision, from which a watch works.
    ///
    /// It first makes a revision of its own (a write to nothing watched, as other resources'
    /// writes are in a real cluster), so that the 410 does not depend on whether something was
    /// written after the last BOOKMARK: bookmarks carry the current revision, and a compaction
    /// at that revision would leave a watch from it valid.
    pub fn expire_history(&self) {
        let mut st = self.state();
        st.rv += 1;
        st.compacted = st.rv;
        st.watch_epoch += 1;
        self.shared.cond.notify_all();
    }

    /// While down, every request gets 503 (a `ServiceUnavailable` Status) and open watch
    /// streams are ended and their connections closed. The test-facing writes still work.
    pub fn set_down(&self, down: bool) {
        let mut st = self.state();
        st.down = down;
        if down {
            st.watch_epoch += 1;
        }
        self.shared.cond.notify_all();
    }

    // ---- what it saw ----

    /// `"METHOD path?query"` of every request read so far, in order, the target as sent.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    fn put(&self, res: Res, obj: Value) -> String {
        let (ns, name) = (meta_str(&obj, "namespace"), meta_str(&obj, "name"));
        assert!(
            !ns.is_empty() && !name.is_empty(),
            "FakeKubeApi: a {} needs metadata.namespace and metadata.name: {obj}",
            res.kind()
        );
        let mut st = self.state();
        let stored = st.write(res, obj);
        self.shared.cond.notify_all();
        meta_str(&stored, "resourceVersion").to_string()
    }

    fn stored(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        self.state().stores[res.index()]
            .objects
            .get(&object_key(ns, name))
            .cloned()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        // Watch streams end on this; `accepting` then stops accepting and cuts every
        // connection when it is dropped.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cond.notify_all();
    }
}

// ---- storage ----

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Res {
    Pods,
    Events,
    Leases,
}

impl Res {
    const ALL: [Res; 3] = [Res::Pods, Res::Events, Res::Leases];

    fn index(self) -> usize {
        self as usize
    }

    fn group(self) -> &'static str {
        match self {
            Res::Pods | Res::Events => "",
            Res::Leases => "coordination.k8s.io",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Pods | Res::Events => "v1",
            Res::Leases => "coordination.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Pods => "Pod",
            Res::Events => "Event",
            Res::Leases => "Lease",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Res::Pods => "pods",
            Res::Events => "events",
            Res::Leases => "leases",
        }
    }

    /// How messages name the resource: `pods`, `leases.coordination.k8s.io`.
    fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    /// How validation messages name the kind: `Pod`, `Lease.coordination.k8s.io`.
    fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_string(),
            g => format!("{}.{g}", self.kind()),
        }
    }

    /// The field selectors the API server supports for the resource (the others get 400).
    fn fields(self) -> &'static [&'static str] {
        match self {
            Res::Pods => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Res::Events => &[
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            Res::Leases => &["metadata.name", "metadata.namespace"],
        }
    }

    /// Whether a PUT to an absent name creates it (the resource strategy's
    /// `AllowCreateOnUpdate`).
    fn allow_create_on_update(self) -> bool {
        matches!(self, Res::Events | Res::Leases)
    }

    /// Whether a PUT without `metadata.resourceVersion` overwrites (the resource strategy's
    /// `AllowUnconditionalUpdate`); leases insist on optimistic concurrency.
    fn allow_unconditional_update(self) -> bool {
        matches!(self, Res::Pods | Res::Events)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One entry of a resource's history.
struct Change {
    rv: u64,
    kind: ChangeType,
    /// The object after the change; for DELETED its last state, carrying the deletion's
    /// revision.
    object: Value,
    /// The object before a MODIFIED change: whether it matched a watch's selector decides
    /// between ADDED, MODIFIED and DELETED for that watch.
    prev: Option<Value>,
}

impl Change {
    /// The event a watch with `filter` gets for this change, if any (the watch cache's rules).
    fn event_for(&self, res: Res, filter: &Filter) -> Option<Value> {
        let now = filter.matches(res, &self.object);
        match self.kind {
            ChangeType::Added => now.then(|| watch_event("ADDED", &self.object)),
            ChangeType::Deleted => now.then(|| watch_event("DELETED", &self.object)),
            ChangeType::Modified => {
                let before = self.prev.as_ref().is_some_and(|p| filter.matches(res, p));
                match (before, now) {
                    (true, true) => Some(watch_event("MODIFIED", &self.object)),
                    (false, true) => Some(watch_event("ADDED", &self.object)),
                    (true, false) => {
                        // The last state that matched, with this change's revision.
                        let mut gone = self.prev.clone()?;
                        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                        Some(watch_event("DELETED", &gone))
                    }
                    (false, false) => None,
                }
            }
        }
    }
}

/// One resource's objects and history.
#[derive(Default)]
struct Store {
    /// Current objects by `namespace/name`: the order of etcd keys, hence of lists.
    objects: BTreeMap<String, Value>,
    /// Every change ever made, in revision order. Never trimmed: compaction only marks it.
    history: Vec<Change>,
}

impl Store {
    /// The objects as they were at revision `rv` (a replay of the history).
    fn snapshot_at(&self, rv: u64) -> BTreeMap<String, Value> {
        let mut objects = BTreeMap::new();
        for c in self.history.iter().take_while(|c| c.rv <= rv) {
            let key = key_of(&c.object);
            if c.kind == ChangeType::Deleted {
                objects.remove(&key);
            } else {
                objects.insert(key, c.object.clone());
            }
        }
        objects
    }
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every change of `state` that a watch stream may care about.
    cond: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct State {
    /// The latest revision handed out (etcd's revision); 0 before the first write.
    rv: u64,
    /// Revisions below this one are compacted away (410 Expired).
    compacted: u64,
    /// By [`Res::index`].
    stores: [Store; 3],
    next_uid: u64,
    requests: Vec<String>,
    down: bool,
    /// Bumped to end every open watch stream.
    watch_epoch: u64,
}

impl State {
    /// Stores `obj` under its namespace and name with the next revision, records ADDED or
    /// MODIFIED, and returns what was stored. Sets `kind` and `apiVersion`; a missing `uid` or
    /// `creationTimestamp` is kept from the stored object, else made up.
    fn write(&mut self, res: Res, mut obj: Value) -> Value {
        let key = key_of(&obj);
        let prev = self.stores[res.index()].objects.get(&key).cloned();
        self.rv += 1;
        let rv = self.rv;
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind());
        let kept = |field: &str| {
            prev.as_ref()
                .map(|p| meta_str(p, field).to_string())
                .filter(|s| !s.is_empty())
        };
        if meta_str(&obj, "uid").is_empty() {
            let uid = kept("uid").unwrap_or_else(|| self.new_uid());
            obj["metadata"]["uid"] = json!(uid);
        }
        if meta_str(&obj, "creationTimestamp").is_empty() {
            let ts = kept("creationTimestamp").unwrap_or_else(now_rfc3339);
            obj["metadata"]["creationTimestamp"] = json!(ts);
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let store = &mut self.stores[res.index()];
        store.history.push(Change {
            rv,
            kind: if prev.is_some() {
                ChangeType::Modified
            } else {
                ChangeType::Added
            },
            object: obj.clone(),
            prev,
        });
        store.objects.insert(key, obj.clone());
        obj
    }

    /// An update through the API: `uid` and `creationTimestamp` stay those of `cur`, and an
    /// update that changes nothing keeps the revision and makes no event (as etcd skips it).
    fn update(&mut self, res: Res, mut obj: Value, cur: &Value) -> Value {
        for field in ["uid", "creationTimestamp"] {
            obj["metadata"][field] = cur["metadata"][field].clone();
        }
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind());
        obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
        if &obj == cur {
            return obj;
        }
        self.write(res, obj)
    }

    /// Removes an object, recording DELETED with a new revision; returns its last state.
    fn remove(&mut self, res: Res, key: &str) -> Option<Value> {
        let mut obj = self.stores[res.index()].objects.remove(key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.stores[res.index()].history.push(Change {
            rv: self.rv,
            kind: ChangeType::Deleted,
            object: obj.clone(),
            prev: None,
        });
        Some(obj)
    }

    fn new_uid(&mut self) -> String {
        self.next_uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.next_uid)
    }
}

// ---- HTTP ----

/// A request as read off the wire.
struct Request {
    method: String,
    /// Path and query as sent.
    target: String,
    path: String,
    /// Decoded query parameters, in order.
    query: Vec<(String, String)>,
    http10: bool,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn keep_alive(&self) -> bool {
        let conn = self
            .headers
            .get("connection")
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default();
        let has = |t: &str| conn.split(',').any(|x| x.trim() == t);
        if self.http10 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

enum ReadOutcome {
    Request(Request),
    /// Clean EOF between requests.
    Closed,
    /// Malformed or too large: answer this and close.
    Reject(Answer),
}

/// A status code and a JSON body.
type Answer = (u16, Value);

/// What to do with a request.
enum Reply {
    Json(Answer),
    Watch(WatchSpec),
}

fn serve_conn(shared: &Shared, stream: TcpStream) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader) {
            Ok(ReadOutcome::Request(r)) => r,
            Ok(ReadOutcome::Closed) | Err(_) => break,
            Ok(ReadOutcome::Reject((status, body))) => {
                let _ = write_json(&mut writer, status, &body, true);
                break;
            }
        };
        let keep_alive = req.keep_alive();
        let reusable = match handle(shared, &req) {
            Reply::Json((status, body)) => {
                write_json(&mut writer, status, &body, !keep_alive).is_ok()
            }
            Reply::Watch(spec) => serve_watch(shared, &mut writer, spec, !keep_alive),
        };
        if !reusable || !keep_alive {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<ReadOutcome> {
    let reject = |e: io::Error| Ok(ReadOutcome::Reject(bad_request(e.to_string())));
    // Skip empty lines before a request line (RFC 9112 §2.2).
    let line = loop {
        match read_head_line(r) {
            Ok(None) => return Ok(ReadOutcome::Closed),
            Ok(Some(l)) if l.is_empty() => continue,
            Ok(Some(l)) => break l,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return reject(e),
            Err(e) => return Err(e),
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
        return Ok(ReadOutcome::Reject(bad_request(format!(
            "bad request line {line:?}"
        ))));
    }
    let headers = match read_headers(r) {
        Ok(h) => h,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return reject(e),
        Err(e) => return Err(e),
    };
    let body = if is_chunked(&headers) {
        match read_chunked(r) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return reject(e),
            Err(e) => return Err(e),
        }
    } else {
        match content_length(&headers) {
            Ok(None) => Vec::new(),
            Ok(Some(len)) if len > MAX_BODY => {
                return Ok(ReadOutcome::Reject(status(
                    413,
                    "RequestEntityTooLarge",
                    format!("Request entity too large: limit is {MAX_BODY}"),
                    None,
                )))
            }
            Ok(Some(len)) => read_exact_vec(r, len)?,
            Err(e) => return reject(e),
        }
    };
    let target = parts[1].to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target.clone(), Vec::new()),
    };
    Ok(ReadOutcome::Request(Request {
        method: parts[0].to_string(),
        target,
        path,
        query,
        http10: parts[2] == "HTTP/1.0",
        headers,
        body,
    }))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Request Entity Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A JSON response; the body ends in a newline, as Go's JSON encoder ends it.
fn write_json(w: &mut TcpStream, status: u16, body: &Value, close: bool) -> io::Result<()> {
    let body = format!("{body}\n");
    let mut msg = format!(
        "HTTP/1.1 {status} {}\r\nCache-Control: no-cache, private\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    if close {
        msg.push_str("Connection: close\r\n");
    }
    msg.push_str("\r\n");
    msg.push_str(&body);
    w.write_all(msg.as_bytes())?;
    w.flush()
}

/// Decides the answer to one request (under the lock) and records it.
fn handle(shared: &Shared, req: &Request) -> Reply {
    let mut st = shared.lock();
    st.requests.push(format!("{} {}", req.method, req.target));
    if st.down {
        return Reply::Json(status(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_string(),
            None,
        ));
    }
    let Some(t) = parse_path(&req.path) else {
        return Reply::Json(status(
            404,
            "NotFound",
            "the server could not find the requested resource".to_string(),
            None,
        ));
    };
    let (res, ns) = (t.res, t.namespace.as_deref());
    let answer = match (req.method.as_str(), t.name.as_deref()) {
        ("GET", None) => match parse_list_options(res, ns, &req.query) {
            Err(a) => Err(a),
            Ok(opts) if opts.watch => return watch_reply(res, opts),
            Ok(opts) => list(&st, res, &opts),
        },
        ("POST", None) => match ns {
            Some(ns) => create(&mut st, res, ns, &req.body),
            None => Err(method_not_allowed()),
        },
        ("GET", Some(name)) => st.stores[res.index()]
            .objects
            .get(&object_key(ns.unwrap_or(""), name))
            .map(|o| (200, o.clone()))
            .ok_or_else(|| not_found(res, name)),
        ("PUT", Some(name)) => replace(&mut st, res, ns.unwrap_or(""), name, &req.body),
        _ => Err(method_not_allowed()),
    };
    shared.cond.notify_all();
    Reply::Json(answer.unwrap_or_else(|a| a))
}

/// What a request path names.
struct Target {
    res: Res,
    namespace: Option<String>,
    name: Option<String>,
}

/// `/api/v1[/namespaces/NS]/PLURAL[/NAME]` and `/apis/GROUP/v1[/namespaces/NS]/PLURAL[/NAME]`
/// (a name only with a namespace: all three resources are namespaced).
fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    let res = Res::ALL
        .into_iter()
        .find(|r| r.plural() == plural && r.group() == group)?;
    if namespace.is_some_and(str::is_empty) || name.is_some_and(str::is_empty) {
        return None;
    }
    Some(Target {
        res,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

// ---- list ----

/// The query parameters of a list or watch.
struct ListOptions {
    watch: bool,
    filter: Filter,
    /// 0: no limit.
    limit: usize,
    continue_token: Option<String>,
    resource_version: Option<String>,
    /// `resourceVersionMatch=Exact`: list at exactly `resource_version`.
    exact: bool,
    bookmarks: bool,
    timeout: Duration,
}

fn parse_list_options(
    res: Res,
    namespace: Option<&str>,
    query: &[(String, String)],
) -> Result<ListOptions, Answer> {
    let mut opts = ListOptions {
        watch: false,
        filter: Filter {
            namespace: namespace.map(str::to_string),
            fields: Vec::new(),
            labels: Vec::new(),
        },
        limit: 0,
        continue_token: None,
        resource_version: None,
        exact: false,
        bookmarks: false,
        timeout: DEFAULT_WATCH_TIMEOUT,
    };
    for (k, v) in query {
        let number = || {
            v.parse::<u64>()
                .map_err(|_| bad_request(format!("invalid {k}: {v:?}")))
        };
        match k.as_str() {
            "watch" => opts.watch = parse_bool(k, v)?,
            "fieldSelector" => opts.filter.fields = parse_field_selector(res, v)?,
            "labelSelector" => opts.filter.labels = parse_label_selector(v)?,
            "limit" => opts.limit = usize::try_from(number()?).unwrap_or(usize::MAX),
            "continue" if !v.is_empty() => opts.continue_token = Some(v.clone()),
            "resourceVersion" if !v.is_empty() => opts.resource_version = Some(v.clone()),
            "resourceVersionMatch" => match v.as_str() {
                "" | "NotOlderThan" => {}
                "Exact" => opts.exact = true,
                _ => {
                    return Err(bad_request(format!(
                        "resourceVersionMatch: Unsupported value: {v:?}"
                    )))
                }
            },
            "allowWatchBookmarks" => opts.bookmarks = parse_bool(k, v)?,
            "timeoutSeconds" => match number()? {
                0 => {}
                n => opts.timeout = Duration::from_secs(n),
            },
            "sendInitialEvents" if parse_bool(k, v)? => {
                let msg = "sendInitialEvents is forbidden for watch unless the WatchList \
                           feature gate is enabled";
                return Err(status(
                    422,
                    "Invalid",
                    format!(
                        "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: \
                         Forbidden: {msg}"
                    ),
                    Some(json!({
                        "group": "meta.k8s.io",
                        "kind": "ListOptions",
                        "causes": [{
                            "reason": "FieldValueForbidden",
                            "message": format!("Forbidden: {msg}"),
                            "field": "sendInitialEvents",
                        }],
                    })),
                ));
            }
            _ => {}
        }
    }
    Ok(opts)
}

fn list(st: &State, res: Res, opts: &ListOptions) -> Result<Answer, Answer> {
    let store = &st.stores[res.index()];
    // Which revision the list is at, the objects then, and the key to continue after.
    let (rv, objects, after) = if let Some(token) = &opts.continue_token {
        let (rv, after) = decode_continue(token)
            .ok_or_else(|| bad_request(format!("continue key is not valid: {token}")))?;
        if rv < st.compacted {
            return Err(status(410, "Expired", CONTINUE_EXPIRED.to_string(), None));
        }
        (rv, store.snapshot_at(rv), Some(after))
    } else if let (true, Some(v)) = (opts.exact, &opts.resource_version) {
        let rv = parse_rv(v)?;
        if rv < st.compacted {
            return Err(too_old(rv, st.compacted));
        }
        (rv, store.snapshot_at(rv), None)
    } else {
        (st.rv, store.objects.clone(), None)
    };
    let matching: Vec<(&String, &Value)> = objects
        .iter()
        .filter(|(k, _)| after.as_deref().is_none_or(|a| k.as_str() > a))
        .filter(|(_, o)| opts.filter.matches(res, o))
        .collect();
    let take = match opts.limit {
        0 => matching.len(),
        n => n.min(matching.len()),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if take < matching.len() {
        metadata["continue"] = json!(encode_continue(rv, matching[take - 1].0));
        // The API server can count what is left only without selectors.
        if opts.filter.fields.is_empty() && opts.filter.labels.is_empty() {
            metadata["remainingItemCount"] = json!(matching.len() - take);
        }
    }
    let items: Vec<Value> = matching[..take].iter().map(|(_, o)| (*o).clone()).collect();
    Ok((
        200,
        json!({
            "kind": format!("{}List", res.kind()),
            "apiVersion": res.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter, or use the \
    continue token in this response to retrieve the remainder of the results. Continuing with the \
    provided token results in an inconsistent list - objects that were created, modified, or \
    deleted between the time the first chunk was returned and now may show up in the list.";

/// The API server's continue token: base64url (no padding) of
/// `{"v":"meta.k8s.io/v1","rv":REV,"start":"KEY\u0000"}`.
fn encode_continue(rv: u64, last_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}")});
    base64url_encode(token.to_string().as_bytes())
}

/// (revision, key to continue after) from a continue token.
fn decode_continue(token: &str) -> Option<(u64, String)> {
    let v: Value = serde_json::from_slice(&base64url_decode(token)?).ok()?;
    if v["v"] != "meta.k8s.io/v1" {
        return None;
    }
    let start = v["start"].as_str()?.strip_suffix('\u{0}')?;
    Some((v["rv"].as_u64()?, start.to_string()))
}

// ---- selectors ----

/// What a list or watch selects: a namespace (from the path) and field and label selectors.
struct Filter {
    namespace: Option<String>,
    fields: Vec<FieldReq>,
    labels: Vec<LabelReq>,
}

impl Filter {
    fn matches(&self, res: Res, obj: &Value) -> bool {
        if self
            .namespace
            .as_deref()
            .is_some_and(|ns| meta_str(obj, "namespace") != ns)
        {
            return false;
        }
        self.fields
            .iter()
            .all(|f| (field_value(res, obj, &f.field) == f.value) != f.negate)
            && self.labels.iter().all(|l| l.matches(obj))
    }
}

/// `field=value`, `field==value` or `field!=value`.
struct FieldReq {
    field: String,
    value: String,
    negate: bool,
}

fn parse_field_selector(res: Res, selector: &str) -> Result<Vec<FieldReq>, Answer> {
    let mut reqs = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value, negate) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, false)
        } else {
            return Err(bad_request(format!(
                "invalid selector: '{selector}'; can't understand '{term}'"
            )));
        };
        let field = field.trim();
        if !res.fields().contains(&field) {
            return Err(bad_request(format!("field label not supported: {field}")));
        }
        reqs.push(FieldReq {
            field: field.to_string(),
            value: value.trim().to_string(),
            negate,
        });
    }
    Ok(reqs)
}

/// A field's value as a selector sees it ("" when absent).
fn field_value(res: Res, obj: &Value, field: &str) -> String {
    let path = if res == Res::Events && field == "source" {
        "source.component"
    } else {
        field
    };
    let mut v = obj;
    for part in path.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// One requirement of a label selector.
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| obj["metadata"]["labels"][k].as_str();
        match self {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        }
    }
}

/// Equality-based (`k=v`, `k==v`, `k!=v`) and set-based (`k in (a,b)`, `k notin (a,b)`, `k`,
/// `!k`) requirements, comma-separated.
fn parse_label_selector(selector: &str) -> Result<Vec<LabelReq>, Answer> {
    let invalid = |term: &str| {
        bad_request(format!(
            "unable to parse requirement: {term:?} in label selector {selector:?}"
        ))
    };
    let set = |rest: &str, term: &str| -> Result<Vec<String>, Answer> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| invalid(term))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    let mut reqs = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut terms = Vec::new();
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let key = |k: &str| -> Result<String, Answer> {
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(invalid(term));
            }
            Ok(k.to_string())
        };
        let req = if let Some(k) = term.strip_prefix('!') {
            LabelReq::NotExists(key(k)?)
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            LabelReq::NotIn(key(k)?, set(rest, term)?)
        } else if let Some((k, rest)) = term.split_once(" in ") {
            LabelReq::In(key(k)?, set(rest, term)?)
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::Ne(key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==") {
            LabelReq::Eq(key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = term.split_once('=') {
            LabelReq::Eq(key(k)?, v.trim().to_string())
        } else {
            LabelReq::Exists(key(term)?)
        };
        reqs.push(req);
    }
    Ok(reqs)
}

// ---- watch ----

/// An accepted watch request.
struct WatchSpec {
    res: Res,
    filter: Filter,
    /// `None`: start now, with a synthetic ADDED for every current object (resourceVersion
    /// absent or "0"); `Some(r)`: every change after revision `r`, then live.
    from: Option<u64>,
    bookmarks: bool,
    timeout: Duration,
}

fn watch_reply(res: Res, opts: ListOptions) -> Reply {
    let from = match opts.resource_version.as_deref() {
        None | Some("0") => None,
        Some(v) => match parse_rv(v) {
            Ok(rv) => Some(rv),
            Err(a) => return Reply::Json(a),
        },
    };
    Reply::Watch(WatchSpec {
        res,
        filter: opts.filter,
        from,
        bookmarks: opts.bookmarks,
        timeout: opts.timeout,
    })
}

/// Why a watch stream ended.
enum WatchEnd {
    /// `timeoutSeconds` passed.
    Timeout,
    /// [`FakeKubeApi::expire_history`].
    Closed,
    /// [`FakeKubeApi::set_down`]: end the stream and close the connection.
    Down,
    /// A write failed: the client went away. (An idle stream notices at its next event or
    /// bookmark, within [`BOOKMARK_INTERVAL`] for kube-runtime's watches.)
    PeerGone,
    /// The server is being dropped.
    Stopped,
}

/// Streams a watch. True when the connection may serve another request.
fn serve_watch(shared: &Shared, w: &mut TcpStream, spec: WatchSpec, close: bool) -> bool {
    // Take the starting point, the initial events and the epoch under one lock, so that no
    // change falls between them and the live part of the stream.
    let (initial, cursor, epoch) = {
        let st = shared.lock();
        if let Some(from) = spec.from.filter(|&r| r < st.compacted) {
            // As real servers answer: 200, one ERROR event, the end of the stream.
            let (_, err) = too_old(from, st.compacted);
            drop(st);
            let event = json!({"type": "ERROR", "object": err});
            return write_watch_head(w, close)
                .and_then(|()| write_event(w, &event))
                .and_then(|()| write_last_chunk(w))
                .is_ok();
        }
        let store = &st.stores[spec.res.index()];
        let (initial, cursor) = match spec.from {
            None => (
                store
                    .objects
                    .values()
                    .filter(|o| spec.filter.matches(spec.res, o))
                    .map(|o| watch_event("ADDED", o))
                    .collect(),
                store.history.len(),
            ),
            Some(r) => (Vec::new(), store.history.partition_point(|c| c.rv <= r)),
        };
        (initial, cursor, st.watch_epoch)
    };
    match stream_watch(shared, w, &spec, initial, cursor, epoch, close) {
        WatchEnd::Timeout | WatchEnd::Closed => write_last_chunk(w).is_ok(),
        WatchEnd::Down => {
            let _ = write_last_chunk(w);
            false
        }
        WatchEnd::PeerGone | WatchEnd::Stopped => false,
    }
}

/// What a watch stream does next.
enum Step {
    Send(Vec<Value>),
    Bookmark(u64),
    End(WatchEnd),
}

fn stream_watch(
    shared: &Shared,
    w: &mut TcpStream,
    spec: &WatchSpec,
    initial: Vec<Value>,
    mut cursor: usize,
    epoch: u64,
    close: bool,
) -> WatchEnd {
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let mut next_bookmark = start + BOOKMARK_INTERVAL;
    let min_rv = spec.from.unwrap_or(0);
    if write_watch_head(w, close).is_err() {
        return WatchEnd::PeerGone;
    }
    for ev in &initial {
        if write_event(w, ev).is_err() {
            return WatchEnd::PeerGone;
        }
    }
    loop {
        let step = {
            let mut st = shared.lock();
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    break Step::End(WatchEnd::Stopped);
                }
                if st.watch_epoch != epoch {
                    break Step::End(if st.down {
                        WatchEnd::Down
                    } else {
                        WatchEnd::Closed
                    });
                }
                let history = &st.stores[spec.res.index()].history;
                if cursor < history.len() {
                    let events: Vec<Value> = history[cursor..]
                        .iter()
                        .filter(|c| c.rv > min_rv)
                        .filter_map(|c| c.event_for(spec.res, &spec.filter))
                        .collect();
                    cursor = history.len();
                    if !events.is_empty() {
                        break Step::Send(events);
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break Step::End(WatchEnd::Timeout);
                }
                if spec.bookmarks && now >= next_bookmark {
                    next_bookmark = now + BOOKMARK_INTERVAL;
                    // Every change up to st.rv has been sent (or filtered out) by now.
                    break Step::Bookmark(st.rv);
                }
                let mut wake = deadline;
                if spec.bookmarks {
                    wake = wake.min(next_bookmark);
                }
                st = shared
                    .cond
                    .wait_timeout(st, wake - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        let sent = match step {
            Step::End(end) => return end,
            Step::Send(events) => events.iter().try_for_each(|ev| write_event(w, ev)),
            Step::Bookmark(rv) => write_event(
                w,
                &json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": spec.res.kind(),
                        "apiVersion": spec.res.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()},
                    },
                }),
            ),
        };
        if sent.is_err() {
            return WatchEnd::PeerGone;
        }
    }
}

fn write_watch_head(w: &mut TcpStream, close: bool) -> io::Result<()> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nCache-Control: no-cache, private\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// One event as one chunk: the JSON object and a newline.
fn write_event(w: &mut TcpStream, event: &Value) -> io::Result<()> {
    let line = format!("{event}\n");
    let mut chunk = format!("{:x}\r\n", line.len()).into_bytes();
    chunk.extend_from_slice(line.as_bytes());
    chunk.extend_from_slice(b"\r\n");
    w.write_all(&chunk)?;
    w.flush()
}

fn write_last_chunk(w: &mut TcpStream) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

fn watch_event(kind: &str, object: &Value) -> Value {
    json!({"type": kind, "object": object})
}

// ---- writes ----

fn create(st: &mut State, res: Res, ns: &str, body: &[u8]) -> Result<Answer, Answer> {
    let mut obj = parse_object(body)?;
    check_namespace(&mut obj, ns)?;
    let name = meta_str(&obj, "name").to_string();
    if name.is_empty() {
        return Err(name_required(res));
    }
    if !meta_str(&obj, "resourceVersion").is_empty() {
        return Err(status(
            500,
            "InternalError",
            "Internal error occurred: resourceVersion should not be set on objects to be created"
                .to_string(),
            Some(json!({"causes": [{
                "message": "resourceVersion should not be set on objects to be created",
            }]})),
        ));
    }
    if st.stores[res.index()]
        .objects
        .contains_key(&object_key(ns, &name))
    {
        return Err(status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
            Some(details(res, &name)),
        ));
    }
    Ok((201, st.write(res, fresh(obj))))
}

fn replace(st: &mut State, res: Res, ns: &str, name: &str, body: &[u8]) -> Result<Answer, Answer> {
    let mut obj = parse_object(body)?;
    check_namespace(&mut obj, ns)?;
    let body_name = meta_str(&obj, "name");
    if body_name != name {
        return Err(bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let Some(cur) = st.stores[res.index()]
        .objects
        .get(&object_key(ns, name))
        .cloned()
    else {
        if !res.allow_create_on_update() {
            return Err(not_found(res, name));
        }
        return Ok((201, st.write(res, fresh(obj))));
    };
    let want = meta_str(&obj, "resourceVersion");
    let stale = if want.is_empty() {
        !res.allow_unconditional_update()
    } else {
        want != meta_str(&cur, "resourceVersion")
    };
    if stale {
        return Err(conflict(res, name));
    }
    Ok((200, st.update(res, obj, &cur)))
}

/// A JSON object with an object (or no) `metadata`.
fn parse_object(body: &[u8]) -> Result<Value, Answer> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("couldn't get version/kind; json parse error: {e}")))?;
    if !v.is_object() || !(v["metadata"].is_object() || v["metadata"].is_null()) {
        return Err(bad_request(
            "the object provided is unrecognized".to_string(),
        ));
    }
    Ok(v)
}

/// Fills an empty `metadata.namespace` from the URL; another one is an error.
fn check_namespace(obj: &mut Value, ns: &str) -> Result<(), Answer> {
    match meta_str(obj, "namespace") {
        "" => {
            obj["metadata"]["namespace"] = json!(ns);
            Ok(())
        }
        n if n == ns => Ok(()),
        _ => Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .to_string(),
        )),
    }
}

/// The object without the fields the server sets on create (a new `uid` and
/// `creationTimestamp` follow).
fn fresh(mut obj: Value) -> Value {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            meta.remove(field);
        }
    }
    obj
}

// ---- Status objects ----

/// A failure `Status` with its HTTP code.
fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Answer {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    (code, s)
}

/// `details` naming an object: name, group (left out for core) and the plural as `kind`.
fn details(res: Res, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": res.plural()});
    if !res.group().is_empty() {
        d["group"] = json!(res.group());
    }
    d
}

fn bad_request(message: String) -> Answer {
    status(400, "BadRequest", message, None)
}

fn not_found(res: Res, name: &str) -> Answer {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", res.qualified()),
        Some(details(res, name)),
    )
}

fn conflict(res: Res, name: &str) -> Answer {
    status(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            res.qualified()
        ),
        Some(details(res, name)),
    )
}

fn name_required(res: Res) -> Answer {
    let msg = "Required value: name or generateName is required";
    let mut d = json!({
        "kind": res.kind(),
        "causes": [{"reason": "FieldValueRequired", "message": msg, "field": "metadata.name"}],
    });
    if !res.group().is_empty() {
        d["group"] = json!(res.group());
    }
    status(
        422,
        "Invalid",
        format!(
            "{} \"\" is invalid: metadata.name: {msg}",
            res.qualified_kind()
        ),
        Some(d),
    )
}

fn method_not_allowed() -> Answer {
    status(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource".to_string(),
        None,
    )
}

fn too_old(rv: u64, compacted: u64) -> Answer {
    status(
        410,
        "Expired",
        format!("too old resource version: {rv} ({compacted})"),
        None,
    )
}

fn parse_rv(v: &str) -> Result<u64, Answer> {
    v.parse()
        .map_err(|_| bad_request(format!("invalid resource version: {v:?}")))
}

/// Go's `strconv.ParseBool`, as the API server parses boolean query parameters.
fn parse_bool(name: &str, v: &str) -> Result<bool, Answer> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(bad_request(format!("invalid {name}: {v:?}"))),
    }
}

// ---- small helpers ----

/// `metadata.<field>` as a string ("" when absent).
fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

fn object_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn key_of(obj: &Value) -> String {
    object_key(meta_str(obj, "namespace"), meta_str(obj, "name"))
}

fn string_map(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

/// Now, RFC 3339 in whole seconds, UTC: how the API server writes `metav1.Time`.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_rfc3339nano(i64::try_from(secs).unwrap_or(0) * 1_000_000_000, 0)
}

/// `application/x-www-form-urlencoded` pairs (what kube-rs sends: `?&watch=true&...`, `+` for
/// space); empty pairs are skipped.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `+` is a space, `%XX` a byte; a `%` not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match b.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding (Go's `base64.RawURLEncoding`).
fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(BASE64URL[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = BASE64URL.iter().position(|&x| x == c)?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
