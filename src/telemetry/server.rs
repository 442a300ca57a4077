//! `/metrics`, `/ready` and `/healthy` on `server.listen`.
//!
//! A deliberately small HTTP/1.1 responder on one thread: it reads at most 8 KiB of request
//! head with a 2 s timeout, answers GET on those three paths only, and closes the connection.
//! It never serves files. Prometheus and the kubelet's probes need nothing more.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::positions::store::unix_now;
use crate::sink::Progress;
use crate::telemetry::metrics::METRICS;

/// What the probes read.
pub struct Health {
    /// Positions loaded and the writer started.
    pub ready: AtomicBool,
    pub progress: Arc<Progress>,
    /// Unhealthy when a batch has waited this long without the writer making progress.
    pub stall_secs: u64,
}

impl Health {
    fn healthy(&self) -> bool {
        let pending = self.progress.pending_since.load(Ordering::Relaxed);
        let last = self.progress.last_ack.load(Ordering::Relaxed);
        let now = unix_now();
        !(pending != 0 && now.saturating_sub(pending.max(last)) > self.stall_secs)
    }
}

/// Binds `listen` and serves on a background thread.
pub fn start(listen: &str, health: Arc<Health>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = serve(conn, &health);
            }
        })?;
    Ok(())
}

fn serve(mut conn: TcpStream, health: &Health) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
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
    let path = target.split(|&b| b == b'?').next().unwrap_or(&[]);
    match path {
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
            "not found: try /metrics, /ready or /healthy\n",
        ),
    }
}

fn respond(conn: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
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
