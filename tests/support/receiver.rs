//! `LokiReceiver`: a fake Loki distributor for integration tests.
//!
//! It accepts `POST /loki/api/v1/push` as Loki does (protobuf `PushRequest` in a raw snappy
//! block; `protocol-facts.md` §1), validates it with Loki's default limits, answers with a
//! programmable status, and records the entries of every request it answered 2xx: those are what
//! Loki would have stored.
//!
//! Deliberate differences from Loki, so that tests stay exact:
//! - A request that fails validation is rejected whole (400) and nothing of it is recorded. Loki
//!   stores the valid entries of such a request and still answers 400.
//! - No `service_name` label is added, and no `detected_level` metadata; no sample-age check
//!   (the CRI [`Clock`](super::cri::Clock) starts in 2023). Entries more than 10 min in the
//!   future are rejected, as in Loki.
//! - `Content-Type` must be `application/x-protobuf` or absent (Loki would also accept JSON), and
//!   `Content-Encoding` must be absent or `snappy`.
//! - A validation failure answers 400 without consuming a programmed status.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use ringtail::sink::proto::{
    EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp,
};

use super::cri::format_rfc3339nano;
use super::http::{
    content_length, is_chunked, read_chunked, read_exact_vec, read_head_line, Accepting,
};

/// The push path.
pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// A programmed "status" that closes the connection without answering (a transport error for
/// the client).
pub const DROP_CONNECTION: u16 = 0;

/// Largest body accepted (Loki's `max_recv_msg_size`, 100 MiB); larger gets 413.
const MAX_BODY: usize = 100 << 20;

/// One entry Loki stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The stream's labels, parsed, empty values dropped (as Loki does).
    pub labels: BTreeMap<String, String>,
    /// Unix time in nanoseconds.
    pub ts_ns: i64,
    pub line: String,
    /// Structured metadata.
    pub metadata: BTreeMap<String, String>,
    /// Sequence number of the request that carried it (index into [`LokiReceiver::log`]).
    pub batch: usize,
    /// When the request was handled.
    pub at: Instant,
}

impl Received {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    pub fn meta(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).map(String::as_str)
    }
}

/// One HTTP request the receiver got, whatever its path or outcome.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// 0, 1, 2, ... in the order requests were read.
    pub seq: usize,
    /// Which connection (0, 1, ...) it came on.
    pub conn: u64,
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Every header, name lower-cased.
    pub headers: BTreeMap<String, String>,
    /// Status answered; [`DROP_CONNECTION`] when the connection was closed instead.
    pub status: u16,
    /// Compressed body size.
    pub body_len: usize,
    /// Streams and entries in the body (0 when it could not be decoded).
    pub streams: usize,
    pub entries: usize,
    /// Why it was rejected, when validation failed.
    pub error: Option<String>,
    pub at: Instant,
    /// When its answer was written in full: from then on the sender knows the outcome.
    pub answered: Option<Instant>,
}

impl RequestRecord {
    /// A header by name, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Loki's validation limits (defaults of `limits_config`, `protocol-facts.md` §1.5).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `max_line_size` in bytes; 0 = unlimited.
    pub max_line_size: usize,
    pub max_label_names_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    /// Sum of SM names and values, per entry.
    pub max_structured_metadata_size: usize,
    pub max_structured_metadata_entries: usize,
    /// Entries newer than now + this are rejected.
    pub creation_grace_period: Duration,
    /// `auth_enabled: true`: a request without `X-Scope-OrgID` gets 401 `no org id`.
    pub require_tenant: bool,
    /// Largest body accepted (`max_recv_msg_size`, or a proxy's limit in front of Loki, such as
    /// nginx's `client_max_body_size`); larger gets 413.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line_size: 256 * 1024,
            max_label_names_per_series: 15,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_structured_metadata_size: 64 * 1024,
            max_structured_metadata_entries: 128,
            creation_grace_period: Duration::from_secs(600),
            require_tenant: false,
            max_body: MAX_BODY,
        }
    }
}

/// The fake Loki. Dropping it closes the listener and every connection.
pub struct LokiReceiver {
    shared: Arc<Shared>,
    accepting: Accepting,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

struct State {
    default_status: u16,
    queued: VecDeque<u16>,
    fail_until: Option<(Instant, u16)>,
    delay: Duration,
    limits: Limits,
    entries: Vec<Received>,
    requests: Vec<RequestRecord>,
    in_flight: usize,
    /// The most requests being handled at once.
    max_in_flight: usize,
    /// A push with an entry labelled `name=value` gets this status (see `fail_label`).
    fail_label: Option<(String, String, u16)>,
    /// `Retry-After` sent with 429 and 5xx answers.
    retry_after: Option<String>,
    last_activity: Instant,
    /// Where stored entries go instead of `entries`, when set (see [`LokiReceiver::set_sink`]).
    sink: Option<EntrySink>,
    /// Entries handed to the sink.
    sunk: usize,
}

/// Takes each stored entry, with the connection (0, 1, ...) it came on.
pub type EntrySink = Box<dyn FnMut(Received, u64) + Send>;

impl LokiReceiver {
    /// Listens on `127.0.0.1:0`.
    pub fn start() -> LokiReceiver {
        LokiReceiver::start_on(0)
    }

    /// Listens on `127.0.0.1:<port>` (to bring a "Loki" back on the port a stopped one had).
    pub fn start_on(port: u16) -> LokiReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("LokiReceiver: bind 127.0.0.1:{port}: {e}"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                default_status: 204,
                queued: VecDeque::new(),
                fail_until: None,
                delay: Duration::ZERO,
                limits: Limits::default(),
                entries: Vec::new(),
                requests: Vec::new(),
                in_flight: 0,
                max_in_flight: 0,
                fail_label: None,
                retry_after: None,
                last_activity: Instant::now(),
                sink: None,
                sunk: 0,
            }),
            cond: Condvar::new(),
        });
        let sh = Arc::clone(&shared);
        let accepting = Accepting::start(listener, "loki", move |stream, id| {
            serve_conn(&sh, stream, id)
        });
        LokiReceiver { shared, accepting }
    }

    /// `http://127.0.0.1:PORT/loki/api/v1/push`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.accepting.addr(), PUSH_PATH)
    }

    pub fn addr(&self) -> SocketAddr {
        self.accepting.addr()
    }

    pub fn port(&self) -> u16 {
        self.accepting.addr().port()
    }

    // ---- programming the answers ----

    /// The next `statuses.len()` requests get these statuses, in order (appended to what is
    /// already queued); then the default again. [`DROP_CONNECTION`] closes the connection
    /// without answering.
    pub fn set_responses(&self, statuses: Vec<u16>) {
        self.state().queued.extend(statuses);
    }

    /// The status when nothing is queued (initially 204).
    pub fn set_default(&self, status: u16) {
        self.state().default_status = status;
    }

    /// Every request answers `status` until `duration` from now has passed (takes precedence
    /// over queued statuses, which are not consumed meanwhile).
    pub fn fail_for(&self, duration: Duration, status: u16) {
        self.state().fail_until = Some((Instant::now() + duration, status));
    }

    /// Delay before each response is written (entries of a 2xx request are recorded before the
    /// delay, as Loki stores before it answers).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// [`set_delay`](Self::set_delay), returning how many requests were recorded before it:
    /// exactly those (seq below the number) are answered after the old delay, and every later
    /// one after the new, since a request reads the delay under the lock that records it.
    pub fn set_delay_counting(&self, delay: Duration) -> usize {
        let mut st = self.state();
        st.delay = delay;
        st.requests.len()
    }

    /// While set, every valid push holding an entry whose label `name` is `value` is answered
    /// `status` (and stores nothing), whatever else is programmed; `None` clears it.
    pub fn fail_label(&self, rule: Option<(&str, &str, u16)>) {
        self.state().fail_label = rule.map(|(n, v, s)| (n.to_string(), v.to_string(), s));
    }

    /// `Retry-After` value sent with every 429 and 5xx answer from now on (`None`: none).
    pub fn set_retry_after(&self, value: Option<&str>) {
        self.state().retry_after = value.map(str::to_string);
    }

    /// The most requests that were being handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state().max_in_flight
    }

    pub fn set_limits(&self, limits: Limits) {
        self.state().limits = limits;
    }

    /// Shortcut for `Limits::max_line_size` (0 = unlimited).
    pub fn set_max_line_size(&self, bytes: usize) {
        self.state().limits.max_line_size = bytes;
    }

    /// From now on, every stored entry is handed to `sink` (with the connection it came on)
    /// instead of being kept: for runs that store more entries than memory holds. It is called
    /// with the receiver's lock held, after the request's entries are decoded and before it is
    /// answered, so it must be quick and must not call the receiver. [`entries`](Self::entries)
    /// and [`lines`](Self::lines) then see only what was kept before;
    /// [`entry_count`](Self::entry_count) and [`wait_for_entries`](Self::wait_for_entries)
    /// count both.
    pub fn set_sink(&self, sink: impl FnMut(Received, u64) + Send + 'static) {
        self.state().sink = Some(Box::new(sink));
    }

    // ---- what it saw ----

    /// Stored entries, in arrival order (request order, then stream and entry order).
    pub fn entries(&self) -> Vec<Received> {
        self.state().entries.clone()
    }

    /// Number of stored entries.
    pub fn entry_count(&self) -> usize {
        let st = self.state();
        st.entries.len() + st.sunk
    }

    /// Stored lines, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        self.state()
            .entries
            .iter()
            .map(|e| e.line.clone())
            .collect()
    }

    /// Waits until at least `n` entries are stored; false on timeout.
    pub fn wait_for_entries(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |st| st.entries.len() + st.sunk >= n)
    }

    /// Waits until at least `n` requests have been answered (or dropped); false on timeout.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |st| st.requests.len() >= n && st.in_flight == 0)
    }

    /// Waits until no request has been in progress, arrived or been answered for `quiet`.
    /// Gives up (false) after `quiet + 60 s`.
    pub fn wait_quiet(&self, quiet: Duration) -> bool {
        self.wait_quiet_max(quiet, quiet + Duration::from_secs(60))
    }

    /// [`wait_quiet`](Self::wait_quiet) giving up after `max`.
    pub fn wait_quiet_max(&self, quiet: Duration, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        let mut st = self.state();
        loop {
            let now = Instant::now();
            let idle = now.saturating_duration_since(st.last_activity);
            if st.in_flight == 0 && idle >= quiet {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let wait = if st.in_flight > 0 {
                Duration::from_millis(50)
            } else {
                quiet - idle
            };
            let wait = wait.min(deadline - now).max(Duration::from_millis(1));
            st = self.shared.cond.wait_timeout(st, wait).unwrap().0;
        }
    }

    /// Requests received, all paths and outcomes.
    pub fn requests(&self) -> usize {
        self.state().requests.len()
    }

    /// Per request, by [`Received::batch`]: when its answer was written in full, if it was.
    pub fn answered(&self) -> Vec<Option<Instant>> {
        self.state().requests.iter().map(|r| r.answered).collect()
    }

    /// Requests by the status answered ([`DROP_CONNECTION`] = 0 for dropped ones).
    pub fn status_counts(&self) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for r in &self.state().requests {
            *counts.entry(r.status).or_insert(0) += 1;
        }
        counts
    }

    /// Requests answered with `status`.
    pub fn count_status(&self, status: u16) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.status == status)
            .count()
    }

    /// Headers of request `i` (0-based, see [`RequestRecord::seq`]); names lower-case.
    /// Panics if there is no such request.
    pub fn headers_of_request(&self, i: usize) -> BTreeMap<String, String> {
        let st = self.state();
        match st.requests.get(i) {
            Some(r) => r.headers.clone(),
            None => panic!(
                "headers_of_request({i}): only {} requests received",
                st.requests.len()
            ),
        }
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepting.accepted()
    }

    /// A one-line-per-request summary, for assertion messages.
    pub fn summary(&self) -> String {
        let st = self.state();
        let mut s = format!(
            "{} requests, {} entries stored\n",
            st.requests.len(),
            st.entries.len()
        );
        for r in &st.requests {
            let _ = writeln!(
                s,
                "  #{} conn {} {} {} -> {} ({} streams, {} entries, {} bytes){}",
                r.seq,
                r.conn,
                r.method,
                r.path,
                r.status,
                r.streams,
                r.entries,
                r.body_len,
                r.error
                    .as_deref()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            );
        }
        s
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_for(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        loop {
            if done(&st) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A request as read off the wire.
struct Request {
    method: String,
    path: String,
    http10: bool,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
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
    Reject(u16, String),
}

fn serve_conn(shared: &Shared, stream: TcpStream, conn: u64) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let max_body = shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .limits
            .max_body;
        let req = match read_request(&mut reader, &mut writer, max_body) {
            Ok(ReadOutcome::Request(r)) => r,
            Ok(ReadOutcome::Closed) | Err(_) => break,
            Ok(ReadOutcome::Reject(status, msg)) => {
                let _ = write_response(&mut writer, status, &msg, true, None);
                break;
            }
        };
        let keep_alive = req.keep_alive();
        let (seq, status, body, delay, retry_after) = handle(shared, &req, conn);
        if status == DROP_CONNECTION {
            let _ = writer.shutdown(Shutdown::Both);
            finish(shared, seq, false);
            return;
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        let ok = write_response(
            &mut writer,
            status,
            &body,
            !keep_alive,
            retry_after.as_deref(),
        )
        .is_ok();
        finish(shared, seq, ok);
        if !ok || !keep_alive {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Request `seq` is over; `answered` when its answer was written in full.
fn finish(shared: &Shared, seq: usize, answered: bool) {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    st.in_flight -= 1;
    st.last_activity = Instant::now();
    if answered {
        st.requests[seq].answered = Some(st.last_activity);
    }
    shared.cond.notify_all();
}

fn read_request(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    max_body: usize,
) -> io::Result<ReadOutcome> {
    // Skip empty lines before a request line (RFC 9112 §2.2).
    let line = loop {
        match read_head_line(r) {
            Ok(None) => return Ok(ReadOutcome::Closed),
            Ok(Some(l)) if l.is_empty() => continue,
            Ok(Some(l)) => break l,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Ok(ReadOutcome::Reject(400, format!("{e}\n")))
            }
            Err(e) => return Err(e),
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
        return Ok(ReadOutcome::Reject(
            400,
            format!("bad request line {line:?}\n"),
        ));
    }
    let headers = match super::http::read_headers(r) {
        Ok(h) => h,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Ok(ReadOutcome::Reject(400, format!("{e}\n")))
        }
        Err(e) => return Err(e),
    };
    if headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = if is_chunked(&headers) {
        match read_chunked(r) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Ok(ReadOutcome::Reject(400, format!("{e}\n")))
            }
            Err(e) => return Err(e),
        }
    } else {
        match content_length(&headers) {
            Ok(None) => Vec::new(),
            Ok(Some(len)) if len > max_body => {
                // Read it first, as nginx does: closing with unread data would reset the
                // connection, and the client would see a transport error instead of the 413.
                if len <= MAX_BODY {
                    read_exact_vec(r, len)?;
                }
                return Ok(ReadOutcome::Reject(
                    413,
                    format!("request body too large: {len} bytes, limit {max_body}\n"),
                ));
            }
            Ok(Some(len)) => read_exact_vec(r, len)?,
            Err(e) => return Ok(ReadOutcome::Reject(400, format!("{e}\n"))),
        }
    };
    let target = parts[1];
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(ReadOutcome::Request(Request {
        method: parts[0].to_string(),
        path,
        http10: parts[2] == "HTTP/1.0",
        headers,
        body,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        260 => "Blocked",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_response(
    w: &mut TcpStream,
    status: u16,
    body: &str,
    close: bool,
    retry_after: Option<&str>,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if let Some(ra) = retry_after {
        head.push_str(&format!("Retry-After: {ra}\r\n"));
    }
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    if !no_body {
        head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        head.push_str("X-Content-Type-Options: nosniff\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    if !no_body {
        msg.extend_from_slice(body.as_bytes());
    }
    w.write_all(&msg)?;
    w.flush()
}

/// An entry that passed validation, before it is stored.
struct Pending {
    labels: BTreeMap<String, String>,
    ts_ns: i64,
    line: String,
    metadata: BTreeMap<String, String>,
}

/// What a valid push carried: entries plus facts for programmed error messages.
struct Valid {
    entries: Vec<Pending>,
    /// Loki's messages for entries it discarded (too long): like Loki, the others are stored and
    /// the answer is 400 with these messages.
    rejected: Vec<String>,
    streams: usize,
    bytes: usize,
    first_labels: String,
    first_ts_ns: i64,
}

/// Decides the answer to one request and records it. Returns (status, body, delay,
/// `Retry-After`).
/// Returns the request's number, and the answer: status, body, delay before it and
/// `Retry-After`.
fn handle(
    shared: &Shared,
    req: &Request,
    conn: u64,
) -> (usize, u16, String, Duration, Option<String>) {
    let limits = {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        st.last_activity = Instant::now();
        st.limits.clone()
    };
    let outcome: Result<Valid, (u16, String)> = if req.path != PUSH_PATH {
        Err((404, "404 page not found\n".to_string()))
    } else if req.method != "POST" {
        Err((405, "method not allowed\n".to_string()))
    } else {
        validate(req, &limits)
    };

    let now = Instant::now();
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let seq = st.requests.len();
    let (status, body, error) = match &outcome {
        Err((status, msg)) => (*status, msg.clone(), Some(msg.trim_end().to_string())),
        Ok(valid) => {
            let failing = st.fail_label.as_ref().and_then(|(n, v, status)| {
                valid
                    .entries
                    .iter()
                    .any(|e| e.labels.get(n) == Some(v))
                    .then_some(*status)
            });
            let status = failing.unwrap_or_else(|| next_status(&mut st, now));
            if (200..300).contains(&status) && !valid.rejected.is_empty() {
                // Partial acceptance: the valid entries are stored, the answer is 400.
                let msg = valid.rejected.join("\n");
                (400, format!("{msg}\n"), Some(msg))
            } else {
                (status, programmed_body(status, valid), None)
            }
        }
    };
    let (streams, entries) = match &outcome {
        Ok(v) => (v.streams, v.entries.len()),
        Err(_) => (0, 0),
    };
    let kept_before = st.entries.len();
    if let Ok(valid) = outcome {
        if (200..300).contains(&status) || (status == 400 && !valid.rejected.is_empty()) {
            for p in valid.entries {
                st.entries.push(Received {
                    labels: p.labels,
                    ts_ns: p.ts_ns,
                    line: p.line,
                    metadata: p.metadata,
                    batch: seq,
                    at: now,
                });
            }
        }
    }
    let State {
        entries: kept,
        sink,
        sunk,
        ..
    } = &mut *st;
    if let Some(sink) = sink {
        for e in kept.drain(kept_before..) {
            *sunk += 1;
            sink(e, conn);
        }
    }
    st.requests.push(RequestRecord {
        seq,
        conn,
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        status,
        body_len: req.body.len(),
        streams,
        entries,
        error,
        at: now,
        answered: None,
    });
    let delay = st.delay;
    let retry_after = st
        .retry_after
        .clone()
        .filter(|_| status == 429 || (500..600).contains(&status));
    shared.cond.notify_all();
    (seq, status, body, delay, retry_after)
}

fn next_status(st: &mut State, now: Instant) -> u16 {
    if let Some((until, status)) = st.fail_until {
        if now < until {
            return status;
        }
        st.fail_until = None;
    }
    st.queued.pop_front().unwrap_or(st.default_status)
}

/// Bodies like Loki's (and its usual gateways') for programmed statuses.
fn programmed_body(status: u16, v: &Valid) -> String {
    let ts = format_rfc3339nano(v.first_ts_ns, 0);
    match status {
        200..=299 => String::new(),
        400 => format!(
            "entry for stream '{}' has timestamp too old: {ts}, oldest acceptable timestamp is: {}\n",
            v.first_labels,
            format_rfc3339nano(v.first_ts_ns.saturating_add(1_000_000_000), 0)
        ),
        401 => "no org id\n".to_string(),
        413 => "request_body_too_large\n".to_string(),
        429 => format!(
            "Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) while \
             attempting to ingest '{}' lines totaling '{}' bytes, reduce log volume or contact \
             your Loki administrator to see if the limit can be increased\n",
            v.entries.len(),
            v.bytes
        ),
        500 => "rpc error: code = Internal desc = programmed failure\n".to_string(),
        502 => "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n".to_string(),
        503 => "at least 2 live replicas required, could only find 1 - unhealthy instances: 10.0.0.1:9095\n".to_string(),
        504 => "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n".to_string(),
        s => format!("programmed status {s}\n"),
    }
}

fn bad(msg: String) -> (u16, String) {
    (400, format!("{msg}\n"))
}

fn unix_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn validate(req: &Request, limits: &Limits) -> Result<Valid, (u16, String)> {
    if let Some(ct) = req.header("content-type") {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/x-protobuf" {
            return Err((
                415,
                format!(
                    "unsupported Content-Type {ct:?}: this receiver takes application/x-protobuf\n"
                ),
            ));
        }
    }
    match req.header("content-encoding").map(str::to_ascii_lowercase) {
        None => {}
        Some(ce) if ce.is_empty() || ce == "snappy" => {}
        Some(ce) => return Err(bad(format!("Content-Encoding {ce:?} not supported"))),
    }
    match req.header("x-scope-orgid") {
        None | Some("") if limits.require_tenant => return Err((401, "no org id\n".to_string())),
        Some(t) if t.contains('|') => return Err(bad(format!("multiple org IDs present: {t}"))),
        _ => {}
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&req.body)
        .map_err(|e| bad(format!("snappy: {e}")))?;
    let push = PushRequest::decode(raw.as_slice()).map_err(|e| bad(format!("proto: {e}")))?;
    if push.streams.is_empty() {
        return Err((
            422,
            "error at least one valid stream is required\n".to_string(),
        ));
    }
    let future_limit = unix_now_ns().saturating_add(limits.creation_grace_period.as_nanos() as i64);
    let mut valid = Valid {
        entries: Vec::new(),
        rejected: Vec::new(),
        streams: push.streams.len(),
        bytes: 0,
        first_labels: push.streams[0].labels.clone(),
        first_ts_ns: 0,
    };
    let mut first = true;
    for stream in &push.streams {
        let ls = &stream.labels;
        let pairs = parse_labels(ls)
            .map_err(|e| bad(format!("Error parsing labels '{ls}' with error: {e}")))?;
        let mut labels = BTreeMap::new();
        for (name, value) in pairs {
            if name.len() > limits.max_label_name_length {
                return Err(bad(format!(
                    "stream '{ls}' has label name too long: '{name}'"
                )));
            }
            if value.len() > limits.max_label_value_length {
                return Err(bad(format!(
                    "stream '{ls}' has label value too long: '{value}'"
                )));
            }
            if labels.contains_key(&name) {
                return Err(bad(format!(
                    "stream '{ls}' has duplicate label name: '{name}'"
                )));
            }
            labels.insert(name, value);
        }
        // Loki drops empty-valued labels (`WithoutEmpty`).
        labels.retain(|_, v: &mut String| !v.is_empty());
        if labels.is_empty() {
            return Err(bad(
                "error at least one label pair is required per stream".to_string()
            ));
        }
        if labels.len() > limits.max_label_names_per_series {
            return Err(bad(format!(
                "entry for stream '{ls}' has {} label names; limit {}",
                labels.len(),
                limits.max_label_names_per_series
            )));
        }
        for e in &stream.entries {
            let ts_ns = match e.timestamp {
                None => {
                    return Err(bad(format!(
                        "entry for stream '{ls}' has timestamp too old: 0001-01-01T00:00:00Z"
                    )))
                }
                Some(Timestamp { seconds, nanos }) => {
                    if !(0..1_000_000_000).contains(&nanos) {
                        return Err(bad(format!(
                            "timestamp: {seconds}s {nanos}ns: nanos not in [0, 1e9)"
                        )));
                    }
                    seconds
                        .checked_mul(1_000_000_000)
                        .and_then(|s| s.checked_add(i64::from(nanos)))
                        .ok_or_else(|| {
                            bad(format!("timestamp: {seconds}s out of the i64 ns range"))
                        })?
                }
            };
            if ts_ns > future_limit {
                return Err(bad(format!(
                    "entry for stream '{ls}' has timestamp too new: {}",
                    format_rfc3339nano(ts_ns, 0)
                )));
            }
            if limits.max_line_size > 0 && e.line.len() > limits.max_line_size {
                valid.rejected.push(format!(
                    "Max entry size '{}' bytes exceeded for stream '{ls}' while adding an entry \
                     with length '{}' bytes",
                    limits.max_line_size,
                    e.line.len()
                ));
                continue;
            }
            if e.structured_metadata.len() > limits.max_structured_metadata_entries {
                return Err(bad(format!(
                    "stream '{ls}' has too many structured metadata entries: {}; limit {}",
                    e.structured_metadata.len(),
                    limits.max_structured_metadata_entries
                )));
            }
            let sm_size: usize = e
                .structured_metadata
                .iter()
                .map(|p| p.name.len() + p.value.len())
                .sum();
            if sm_size > limits.max_structured_metadata_size {
                return Err(bad(format!(
                    "stream '{ls}' has structured metadata too large: '{sm_size}' bytes; limit: \
                     '{}' bytes",
                    limits.max_structured_metadata_size
                )));
            }
            let mut metadata = BTreeMap::new();
            for p in &e.structured_metadata {
                if p.name.is_empty() {
                    return Err(bad(format!(
                        "stream '{ls}' has a structured metadata entry with an empty name"
                    )));
                }
                if metadata.insert(p.name.clone(), p.value.clone()).is_some() {
                    return Err(bad(format!(
                        "stream '{ls}' has duplicate structured metadata name: '{}'",
                        p.name
                    )));
                }
            }
            if first {
                valid.first_labels = ls.clone();
                valid.first_ts_ns = ts_ns;
                first = false;
            }
            valid.bytes += e.line.len() + sm_size;
            valid.entries.push(Pending {
                labels: labels.clone(),
                ts_ns,
                line: e.line.clone(),
                metadata,
            });
        }
    }
    Ok(valid)
}

/// Parses a Loki stream label string the way Prometheus' `ParseMetric` does: `{a="b", c="d"}`,
/// with Go string literals (`"..."` or `'...'` with `\\ \" \' \n \t \r \a \b \f \v \xHH \NNN
/// \uHHHH \UHHHHHHHH` escapes, or a raw `` `...` ``), whitespace between tokens and an optional
/// trailing comma. Label names are `[a-zA-Z_][a-zA-Z0-9_]*`. Returns the pairs in their order,
/// empty values included, duplicates included (the caller rejects them).
pub fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
            *i += 1;
        }
    };
    let err = |i: usize, what: &str| -> String {
        let found = match s.get(i..).and_then(|r| r.chars().next()) {
            Some(c) => format!("{c:?}"),
            None => "end of input".to_string(),
        };
        format!("1:{}: parse error: {what}, found {found}", i + 1)
    };
    skip_ws(&mut i);
    if i >= b.len() || b[i] != b'{' {
        return Err(err(i, "expected '{'"));
    }
    i += 1;
    let mut pairs = Vec::new();
    loop {
        skip_ws(&mut i);
        if i < b.len() && b[i] == b'}' {
            i += 1;
            break;
        }
        // Label name.
        let start = i;
        if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
        } else {
            return Err(err(i, "expected label name"));
        }
        let name = s[start..i].to_string();
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(err(i, "expected '=' after label name"));
        }
        i += 1;
        skip_ws(&mut i);
        let (value, next) = parse_go_string(s, i).map_err(|(at, what)| err(at, &what))?;
        i = next;
        pairs.push((name, value));
        skip_ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {
                i += 1;
                break;
            }
            _ => return Err(err(i, "expected ',' or '}'")),
        }
    }
    skip_ws(&mut i);
    if i != b.len() {
        return Err(err(i, "unexpected input after '}'"));
    }
    Ok(pairs)
}

/// Parses a Go string literal starting at byte `i` of `s`; returns the value and the index
/// after the closing quote. Errors carry a byte index.
fn parse_go_string(s: &str, i: usize) -> Result<(String, usize), (usize, String)> {
    let b = s.as_bytes();
    let quote = match b.get(i) {
        Some(&q @ (b'"' | b'\'' | b'`')) => q,
        _ => return Err((i, "expected quoted string".to_string())),
    };
    let mut out: Vec<u8> = Vec::new();
    let mut j = i + 1;
    loop {
        let c = match b.get(j) {
            None => return Err((j, "unterminated quoted string".to_string())),
            Some(&c) => c,
        };
        if c == quote {
            j += 1;
            break;
        }
        if quote == b'`' {
            out.push(c);
            j += 1;
            continue;
        }
        if c == b'\n' {
            return Err((j, "unterminated quoted string".to_string()));
        }
        if c != b'\\' {
            out.push(c);
            j += 1;
            continue;
        }
        // Escape.
        let e = match b.get(j + 1) {
            None => return Err((j, "unterminated escape".to_string())),
            Some(&e) => e,
        };
        j += 2;
        let simple = match e {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' => Some(b'\\'),
            q if q == quote => Some(q),
            _ => None,
        };
        if let Some(v) = simple {
            out.push(v);
            continue;
        }
        let hex = |from: usize, n: usize| -> Result<u32, (usize, String)> {
            let digits = s
                .get(from..from + n)
                .filter(|d| d.bytes().all(|x| x.is_ascii_hexdigit()))
                .ok_or((from, "invalid escape sequence".to_string()))?;
            Ok(u32::from_str_radix(digits, 16).unwrap())
        };
        match e {
            b'x' => {
                out.push(hex(j, 2)? as u8);
                j += 2;
            }
            b'0'..=b'7' => {
                let digits = s
                    .get(j - 1..j + 2)
                    .filter(|d| d.bytes().all(|x| (b'0'..=b'7').contains(&x)))
                    .ok_or((j - 1, "invalid escape sequence".to_string()))?;
                let v = u32::from_str_radix(digits, 8).unwrap();
                if v > 255 {
                    return Err((j - 1, "octal escape value > 255".to_string()));
                }
                out.push(v as u8);
                j += 2;
            }
            b'u' | b'U' => {
                let n = if e == b'u' { 4 } else { 8 };
                let v = hex(j, n)?;
                let ch = char::from_u32(v).ok_or((
                    j,
                    "escape sequence is an invalid Unicode character".to_string(),
                ))?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                j += n;
            }
            _ => return Err((j - 1, "unknown escape sequence".to_string())),
        }
    }
    let value =
        String::from_utf8(out).map_err(|_| (i, "label value is not valid UTF-8".to_string()))?;
    Ok((value, j))
}

// ---- building pushes (for tests that play the client) ----

/// An entry with nanosecond timestamp `ts_ns`, `line` and structured metadata `sm`.
pub fn push_entry(ts_ns: i64, line: &str, sm: &[(&str, &str)]) -> EntryAdapter {
    EntryAdapter {
        timestamp: Some(Timestamp {
            seconds: ts_ns.div_euclid(1_000_000_000),
            nanos: ts_ns.rem_euclid(1_000_000_000) as i32,
        }),
        line: line.to_string(),
        structured_metadata: sm
            .iter()
            .map(|(n, v)| LabelPairAdapter {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
    }
}

/// A stream with a labels string as sent (`{a="b"}`).
pub fn push_stream(labels: &str, entries: Vec<EntryAdapter>) -> StreamAdapter {
    StreamAdapter {
        labels: labels.to_string(),
        entries,
        hash: 0,
    }
}

/// Protobuf-encodes and snappy-compresses (raw block) a push, as a client sends it.
pub fn encode_push(streams: Vec<StreamAdapter>) -> Vec<u8> {
    let req = PushRequest { streams };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy compress")
}
