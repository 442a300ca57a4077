//! A small blocking HTTP/1.1 client and the message-framing helpers shared with the receiver.
//!
//! Enough for tests: `Content-Length` and chunked bodies, keep-alive connections, interim `100`
//! responses skipped. No TLS, no redirects.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Longest request/status line or header line accepted.
pub const MAX_HEAD_LINE: u64 = 64 * 1024;

/// A response as the client read it. Header names are lower-case; repeated headers are joined
/// with `", "`.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header by name, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Splits `http://host:port/path` into a socket address and the path (with query).
pub fn split_url(url: &str) -> io::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("not an http:// URL: {url}")))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid(format!("cannot resolve {hostport}")))?;
    Ok((addr, path))
}

/// One client connection; requests on it are sent one after another (keep-alive).
pub struct HttpConn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpConn {
    /// Connects with a 10 s connect/read/write timeout.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<HttpConn> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid("no address".to_string()))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            addr,
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Changes the read timeout (for servers that are slow on purpose).
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(timeout))
    }

    /// Sends one request and reads its response. `Host` and `Content-Length` are added unless
    /// given in `headers`.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !has("host") {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        if !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        self.writer.write_all(&msg)?;
        self.writer.flush()?;
        read_response(&mut self.reader, method == "HEAD")
    }

    /// True when the server has closed the connection (a read returns EOF at once).
    pub fn is_closed_by_peer(&mut self) -> bool {
        let _ = self
            .writer
            .set_read_timeout(Some(Duration::from_millis(500)));
        matches!(self.reader.fill_buf(), Ok([]))
    }
}

/// One request on a fresh connection, with `Connection: close`.
pub fn request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut conn = HttpConn::connect(addr)?;
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        all.push(("Connection", "close"));
    }
    conn.request(method, path, &all, body)
}

/// `GET http://127.0.0.1:<port><path>`.
pub fn get(port: u16, path: &str) -> io::Result<HttpResponse> {
    request(("127.0.0.1", port), "GET", path, &[], &[])
}

/// `POST <url>` on a fresh connection.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<HttpResponse> {
    let (addr, path) = split_url(url)?;
    request(addr, "POST", &path, headers, body)
}

/// Reads a response (skipping interim 1xx responses other than 101).
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> io::Result<HttpResponse> {
    loop {
        let line = read_head_line(r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(invalid(format!("bad status line: {line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line: {line:?}")))?;
        let headers = read_headers(r)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let body = if head_request || status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else if is_chunked(&headers) {
            read_chunked(r)?
        } else if let Some(len) = content_length(&headers)? {
            read_exact_vec(r, len)?
        } else {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            body
        };
        return Ok(HttpResponse {
            status,
            headers,
            body,
        });
    }
}

/// Reads one CRLF- (or LF-) terminated line of a message head, without the terminator.
/// `Ok(None)` at EOF before any byte.
pub fn read_head_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = r.take(MAX_HEAD_LINE).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "head line not terminated",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("head line is not UTF-8".to_string()))
}

/// Reads header lines up to the empty line. Names are lower-cased; repeats joined with `", "`.
pub fn read_headers(r: &mut impl BufRead) -> io::Result<BTreeMap<String, String>> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let line = read_head_line(r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in headers"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line: {line:?}")))?;
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(' ') {
            return Err(invalid(format!("bad header name: {line:?}")));
        }
        let value = value.trim().to_string();
        headers
            .entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
}

/// True when `Transfer-Encoding` ends in `chunked`.
pub fn is_chunked(headers: &BTreeMap<String, String>) -> bool {
    headers
        .get("transfer-encoding")
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// The `Content-Length`, if any; an error when it is not a number.
pub fn content_length(headers: &BTreeMap<String, String>) -> io::Result<Option<usize>> {
    match headers.get("content-length") {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("bad Content-Length: {v:?}"))),
    }
}

/// Reads exactly `len` bytes.
pub fn read_exact_vec(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads a chunked body (and its trailers).
pub fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_head_line(r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in chunked body"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size: {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            read_headers(r)?;
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = Vec::new();
        r.read_until(b'\n', &mut crlf)?;
        if crlf != b"\r\n" && crlf != b"\n" {
            return Err(invalid("chunk not followed by CRLF".to_string()));
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The accept side of a test server (the fake Loki, the fake kube API): a thread that takes
/// connections and serves each on a thread of its own, numbered 0, 1, ... in accept order, and
/// keeps a handle on every open one, so that dropping it stops accepting and cuts them all.
pub struct Accepting {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Conns>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, TcpStream>,
}

fn lock(conns: &Mutex<Conns>) -> MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|e| e.into_inner())
}

impl Accepting {
    /// Accepts on `listener` until dropped; `serve(stream, id)` runs on the connection's thread.
    pub fn start(
        listener: TcpListener,
        name: &str,
        serve: impl Fn(TcpStream, u64) + Send + Sync + 'static,
    ) -> Accepting {
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Conns>> = Arc::default();
        let serve = Arc::new(serve);
        let (st, cs, conn_name) = (stop.clone(), conns.clone(), name.to_string());
        let thread = thread::Builder::new()
            .name(format!("{name}-accept-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        return;
                    }
                    let stream = match conn {
                        Ok(s) => s,
                        Err(_) => {
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let id = {
                        let mut c = lock(&cs);
                        let id = c.next;
                        c.next += 1;
                        if let Ok(clone) = stream.try_clone() {
                            c.open.insert(id, clone);
                        }
                        id
                    };
                    let (serve, done) = (serve.clone(), cs.clone());
                    let spawned = thread::Builder::new()
                        .name(format!("{conn_name}-conn-{id}"))
                        .spawn(move || {
                            serve(stream, id);
                            lock(&done).open.remove(&id);
                        });
                    if spawned.is_err() {
                        lock(&cs).open.remove(&id);
                    }
                }
            })
            .expect("spawn accept thread");
        Accepting {
            addr,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        lock(&self.conns).next
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
        for conn in lock(&self.conns).open.values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}
