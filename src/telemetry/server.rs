//! `/metrics`, `/ready`, `/healthy` and `/tap` on `server.listen`.
//!
//! A deliberately small HTTP/1.1 responder: each connection gets a short-lived thread (at most
//! [`MAX_CONNECTIONS`] at once), which reads at most 8 KiB of request head within 2 s in all,
//! answers GET on those paths only, and closes the connection. It never serves files.
//! Prometheus and the kubelet's probes need nothing more, and a slow client cannot hold up the
//! probes. `/tap` streams until its client hangs up; it answers loopback clients only, and at
//! most [`MAX_TAPS`] at once, so taps never take the probes' connections.

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
                let mut conn = match conn {
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
                    let _ = respond(&mut conn, 503, "text/plain", "busy\n");
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

fn serve(mut conn: TcpStream, health: &Health) -> std::io::Result<()> {
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        conn.set_read_timeout(Some(left))?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(&mut conn, 431, "text/plain", "request head too large\n");
        }
    }
    let first = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = first.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    if method != b"GET" && method != b"HEAD" {
        return respond(&mut conn, 405, "text/plain", "only GET\n");
    }
    let mut split = target.splitn(2, |&b| b == b'?');
    let path = split.next().unwrap_or(&[]);
    let query = split.next().unwrap_or(&[]);
    match path {
        b"/tap" => tap(conn, query),
        b"/metrics" => respond(
            &mut conn,
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &METRICS.render(),
        ),
        b"/ready" if health.ready.load(Ordering::Relaxed) => {
            respond(&mut conn, 200, "text/plain", "ready\n")
        }
        b"/ready" => respond(&mut conn, 503, "text/plain", "starting\n"),
        b"/healthy" if health.healthy() => respond(&mut conn, 200, "text/plain", "healthy\n"),
        b"/healthy" => respond(
            &mut conn,
            503,
            "text/plain",
            "the writer has made no progress while data is pending; see the logs\n",
        ),
        _ => respond(
            &mut conn,
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
        );
    }
    let filter = match std::str::from_utf8(query)
        .map_err(|e| e.to_string())
        .and_then(Filter::from_query)
    {
        Ok(f) => f,
        Err(e) => return respond(&mut conn, 400, "text/plain", &format!("{e}\n")),
    };
    let Some(sub) = TAP.subscribe(filter) else {
        return respond(
            &mut conn,
            503,
            "text/plain",
            &format!("{MAX_TAPS} taps are open already; close one\n"),
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

fn respond(conn: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
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
    conn.write_all(body.as_bytes())
}
