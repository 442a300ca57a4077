//! `/metrics`, `/ready`, `/healthy` and `/tap` on `server.listen`.
//!
//! A deliberately small HTTP/1.1 responder: each connection gets a short-lived thread (at most
//! [`MAX_CONNECTIONS`] at once), which reads at most 8 KiB of request head within 2 s in all,
//! answers GET on those paths only, and closes the connection. It never serves files.
//! Prometheus and the kubelet's probes need nothing more, and a slow client cannot hold up the
//! probes: when every slot is held, a new connection gets a brief moment on the accept thread to
//! be a probe (they ask at once) and is answered only if it is one. `/tap` streams until its
//! client hangs up; it answers loopback clients only, and at most [`MAX_TAPS`] at once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::positions::store::unix_now;
use crate::sink::Progress;
use crate::telemetry::metrics::METRICS;
use crate::telemetry::tap::{Filter, MAX_TAPS, TAP};

/// What the probes read.
pub struct Health {
    /// Positions loaded and the writer started.
    pub ready: AtomicBool,
    pub progress: Arc<Progress>,
    /// Unhealthy when a batch has waited this long without the writer making progress.
    pub stall_secs: u64,
}

impl Health {
    /// False only when a batch is waiting and the sender has finished no attempt for
    /// `stall_secs`: a wedged writer. Retrying against a down Loki is progress, so a Loki outage
    /// does not make every node's ringtail fail its liveness probe.
    fn healthy(&self) -> bool {
        let pending = self.progress.pending_since.load(Ordering::Relaxed);
        let last = self.progress.last_attempt.load(Ordering::Relaxed);
        let now = unix_now();
        !(pending != 0 && now.saturating_sub(pending.max(last)) > self.stall_secs)
    }
}

/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// Binds `listen` and serves on a background thread.
pub fn start(listen: &str, health: Arc<Health>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, typically: do not spin.
                        log::warn!("metrics server: cannot accept a connection: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    // Every slot is held (idle clients, taps): the kubelet's probes must still
                    // get their answer, and they send their request at once. Give this one a
                    // moment, here on the accept thread, to be a probe; anything else is busy.
                    let _ = serve_when_busy(conn, &health);
                    continue;
                }
                let (health, done) = (health.clone(), active.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("http-conn".into())
                        .spawn(move || {
                            let _ = serve(conn, &health);
                            done.fetch_sub(1, Ordering::AcqRel);
                        });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(())
}

/// How long a connection beyond [`MAX_CONNECTIONS`] has to send its request.
const BUSY_DEADLINE: Duration = Duration::from_millis(200);

fn serve(mut conn: TcpStream, health: &Health) -> std::io::Result<()> {
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    match read_head(&mut conn, HEAD_DEADLINE)? {
        Head::Got(head) => answer(conn, &head, health, false),
        Head::None | Head::Answered => Ok(()),
    }
}

/// A connection over the limit: answered only if it is a probe that asks at once; anything
/// else is told it is busy.
fn serve_when_busy(mut conn: TcpStream, health: &Health) -> std::io::Result<()> {
    conn.set_write_timeout(Some(BUSY_DEADLINE))?;
    match read_head(&mut conn, BUSY_DEADLINE)? {
        Head::Got(head) => answer(conn, &head, health, true),
        Head::None => respond(&mut conn, 503, "text/plain", "busy\n", false),
        Head::Answered => Ok(()),
    }
}

/// What a client sent in time.
enum Head {
    Got(Vec<u8>),
    /// No complete head before the deadline (or the client left).
    None,
    /// Too large: answered 431 already.
    Answered,
}

/// Reads the request head (at most 8 KiB) within `limit`.
fn read_head(conn: &mut TcpStream, limit: Duration) -> std::io::Result<Head> {
    let deadline = Instant::now() + limit;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Head::None);
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Head::None)
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            respond(conn, 431, "text/plain", "request head too large\n", false)?;
            return Ok(Head::Answered);
        }
    }
    Ok(Head::Got(head))
}

/// Routes one request. `busy`: every connection slot is taken, so only the probes are served.
fn answer(mut conn: TcpStream, head: &[u8], health: &Health, busy: bool) -> std::io::Result<()> {
    let first = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = first.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    if method != b"GET" && method != b"HEAD" {
        return respond(&mut conn, 405, "text/plain", "only GET\n", false);
    }
    let head_only = method == b"HEAD";
    let mut split = target.splitn(2, |&b| b == b'?');
    let path = split.next().unwrap_or(&[]);
    let query = split.next().unwrap_or(&[]);
    let mut reply = |code, ctype, body: &str| respond(&mut conn, code, ctype, body, head_only);
    match path {
        b"/ready" if health.ready.load(Ordering::Relaxed) => reply(200, "text/plain", "ready\n"),
        b"/ready" => reply(503, "text/plain", "starting\n"),
        b"/healthy" if health.healthy() => reply(200, "text/plain", "healthy\n"),
        b"/healthy" => reply(
            503,
            "text/plain",
            "the writer has made no progress while data is pending; see the logs\n",
        ),
        _ if busy => reply(503, "text/plain", "busy\n"),
        b"/tap" if head_only => reply(200, "application/x-ndjson", ""),
        b"/tap" => tap(conn, query),
        b"/metrics" => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &METRICS.render(),
        ),
        _ => reply(
            404,
            "text/plain",
            "not found: try /metrics, /ready, /healthy or /tap\n",
        ),
    }
}

/// How often a quiet tap gets a blank line, so that a client that hung up is noticed.
const TAP_KEEPALIVE: Duration = Duration::from_secs(2);

/// Streams the entries the writer receives, as JSON lines, until the client hangs up.
fn tap(mut conn: TcpStream, query: &[u8]) -> std::io::Result<()> {
    if !conn.peer_addr()?.ip().is_loopback() {
        return respond(
            &mut conn,
            403,
            "text/plain",
            "/tap answers loopback clients only (log lines are data): use `kubectl exec ... -- \
             ringtail tap` or `kubectl port-forward`\n",
            false,
        );
    }
    let filter = match std::str::from_utf8(query)
        .map_err(|e| e.to_string())
        .and_then(Filter::from_query)
    {
        Ok(f) => f,
        Err(e) => return respond(&mut conn, 400, "text/plain", &format!("{e}\n"), false),
    };
    let Some(sub) = TAP.subscribe(filter) else {
        return respond(
            &mut conn,
            503,
            "text/plain",
            &format!("{MAX_TAPS} taps are open already; close one\n"),
            false,
        );
    };
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n",
    )?;
    let mut reported = 0;
    loop {
        match sub.recv_timeout(TAP_KEEPALIVE) {
            Ok(line) => conn.write_all(line.as_bytes())?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => conn.write_all(b"\n")?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
        let dropped = sub.dropped.load(Ordering::Relaxed);
        if dropped != reported {
            conn.write_all(format!("{{\"tap_dropped\":{}}}\n", dropped - reported).as_bytes())?;
            reported = dropped;
        }
    }
}

/// Writes a whole response and closes; `head_only` (a HEAD request): the headers only.
fn respond(
    conn: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    if head_only {
        return Ok(());
    }
    conn.write_all(body.as_bytes())
}
