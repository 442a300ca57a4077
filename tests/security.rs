//! Security checks of the real binary. Secrets (the bearer token of `loki.bearer_token_file`,
//! the password of `loki.basic_auth.password_file`) reach Loki's `Authorization` header and
//! nothing else ringtail prints or serves. The metrics server on `server.listen` is reachable by
//! every pod of the cluster (the DaemonSet has no NetworkPolicy), so it answers GET and HEAD on
//! its four paths only, and a hostile client can neither make it read much, nor hold its
//! connections, nor keep the kubelet's probes from their answer (limits in
//! `src/telemetry/server.rs`).
//!
//! `/tap` (loopback clients only, and no secret in what it streams) is covered in `tests/tap.rs`.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// `MAX_CONNECTIONS` in `server.rs`: connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// The request head is read up to this many bytes; one more is 431.
const MAX_HEAD: usize = 8192;
/// `HEAD_DEADLINE` in `server.rs`: the time a client has to send its whole request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// The 404 body, exactly.
const NOT_FOUND: &str = "not found: try /metrics, /ready, /healthy or /tap\n";

/// A ringtail with nothing to ship, for the server checks.
fn idle_ringtail(dir: &Path) -> (Ringtail, u16) {
    let (rx, port) = (LokiReceiver::start(), free_port());
    std::fs::create_dir_all(dir.join("pods")).unwrap();
    let cfg = pods_only_config(&dir.join("data"), &dir.join("pods"), &rx.url(), port);
    let mut rt = Ringtail::start(&cfg, &dir.join("run"));
    assert!(
        rt.wait_ready(port, Duration::from_secs(10)),
        "not ready\n{}",
        rt.logs()
    );
    // The receiver is not needed once ready: nothing is shipped.
    drop(rx);
    (rt, port)
}

/// What the server answered to a raw request: every byte until it closed the connection.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `request` exactly as given on a fresh connection, and reads until the server closes.
fn raw(port: u16, request: &[u8]) -> Answer {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request).expect("send the request");
    let mut all = Vec::new();
    c.read_to_end(&mut all)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(request)));
    parse_answer(&all, request)
}

fn parse_answer(all: &[u8], request: &[u8]) -> Answer {
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no response head to {:?}: {:?}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(all)
            )
        });
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    Answer {
        status,
        head,
        body: all[split + 4..].to_vec(),
    }
}

fn get(port: u16, target: &str) -> Answer {
    raw(
        port,
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Still running, and ready.
fn assert_alive(rt: &mut Ringtail, port: u16) {
    assert!(
        rt.is_running(),
        "exited: {:?}\n{}",
        rt.try_status(),
        rt.logs()
    );
    assert_eq!(get(port, "/ready").status, 200);
}

/// Run twice at `log.level: debug`, once with a bearer token and once with basic auth, while
/// Loki answers 500 (retried) then 401 (dropped) then 204: the secret is in every request's
/// `Authorization` header, and in none of stderr, stdout, `check-config`'s output or `/metrics`
/// (neither as it is nor base64-encoded). `check-config` names the file instead.
#[test]
fn secrets_stay_out_of_stderr_check_config_and_metrics_even_at_debug() {
    let token = "tok-7d1f0c2b9e8a-do-not-log";
    let password = "pw-5c3e9a71-do-not-log";
    let basic = "cmluZ3RhaWw6cHctNWMzZTlhNzEtZG8tbm90LWxvZw=="; // base64("ringtail:" + password)
    for (name, secret, encoded, header) in [
        ("bearer", token, token, format!("Bearer {token}")),
        ("basic", password, basic, format!("Basic {basic}")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (rx, port) = (LokiReceiver::start(), free_port());
        let pods = dir.path().join("pods");
        let secret_file = dir.path().join(format!("{name}-secret"));
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let key = match name {
            "bearer" => format!("bearer_token_file: {}", secret_file.display()),
            _ => format!(
                "basic_auth: {{ username: ringtail, password_file: {} }}",
                secret_file.display()
            ),
        };
        let cfg = pods_only_config(&dir.path().join("data"), &pods, &rx.url(), port).replacen(
            "loki:\n",
            &format!("loki:\n  {key}\n"),
            1,
        ) + "log:\n  level: debug\n";
        let mut log = PodDir::new(&pods, "ns", "p", "u").container("c");
        for i in 0..5 {
            log.write_line(Stream::Stdout, format!("dropped with the 401 {i}"));
        }
        rx.set_responses(vec![500, 401]);
        let mut rt = Ringtail::start(&cfg, &dir.path().join("run"));
        assert!(
            rt.wait_ready(port, Duration::from_secs(10)),
            "{}",
            rt.logs()
        );
        assert!(rx.wait_for_requests(2, WAIT), "{}", rt.logs());
        for i in 0..5 {
            log.write_line(Stream::Stdout, format!("stored {i}"));
        }
        assert!(rx.wait_for_entries(5, WAIT), "{}", rt.logs());
        let m = metrics(port);
        stop(&mut rt);

        let requests = rx.log();
        assert_eq!(requests.len(), 3, "{}", rx.summary());
        for r in &requests {
            assert_eq!(r.header("authorization"), Some(header.as_str()), "{name}");
        }
        let stderr = rt.stderr_text();
        for said in [
            "level=debug",
            "push to Loki failed (500",
            "rejected a batch",
        ] {
            assert!(stderr.contains(said), "{name}: {said:?} not in\n{stderr}");
        }
        let check = run_cli(
            &["check-config", rt.config_path().to_str().unwrap()],
            Duration::from_secs(10),
        );
        assert_eq!(check.status.and_then(|s| s.code()), Some(0), "{check:?}");
        assert!(
            check.stdout.contains(&secret_file.display().to_string()),
            "{name}: check-config names the file\n{}",
            check.stdout
        );
        for (what, text) in [
            ("stderr", stderr.as_str()),
            ("stdout", &rt.stdout_text()),
            ("check-config stdout", &check.stdout),
            ("check-config stderr", &check.stderr),
            ("/metrics", &m),
        ] {
            for s in [secret, encoded] {
                assert!(!text.contains(s), "{name}: {s:?} leaked in {what}:\n{text}");
            }
        }
    }
}

/// GET and HEAD on `/metrics`, `/ready` and `/healthy` answer 200 (HEAD without a body), GET
/// `/tap` starts a stream; every other target is 404 with the same short body, whatever
/// traversal or absolute form it takes (the server never serves files), and every other method
/// is 405.
#[test]
fn the_server_answers_get_and_head_on_its_four_paths_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rt, port) = idle_ringtail(dir.path());

    for path in ["/metrics", "/ready", "/healthy", "/metrics?name=x"] {
        let a = get(port, path);
        assert_eq!(a.status, 200, "GET {path}: {}", a.head);
        assert!(!a.body.is_empty(), "GET {path}");
    }
    let a = get(port, "/metrics");
    assert!(
        a.head
            .contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        a.head
    );
    let mut tap = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tap.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tap.write_all(b"GET /tap HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 17];
    tap.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
    drop(tap);

    let targets = [
        "/".to_string(),
        "".to_string(),
        "*".to_string(),
        "/metrics/".to_string(),
        "/metricsx".to_string(),
        "/METRICS".to_string(),
        "//metrics".to_string(),
        "/./metrics".to_string(),
        "/ready/../metrics".to_string(),
        "/../../etc/passwd".to_string(),
        "/metrics/../etc/passwd".to_string(),
        "/metrics/../../../../etc/passwd".to_string(),
        "/%2e%2e/%2e%2e/etc/passwd".to_string(),
        "/..%2f..%2fetc%2fpasswd".to_string(),
        "/etc/passwd".to_string(),
        "/proc/self/environ".to_string(),
        "/metrics%00".to_string(),
        format!("http://127.0.0.1:{port}/metrics"),
        format!("http://127.0.0.1:{port}/../../etc/passwd"),
        "http://localhost/etc/passwd".to_string(),
        "file:///etc/passwd".to_string(),
    ];
    for target in &targets {
        let a = get(port, target);
        assert_eq!(a.status, 404, "GET {target:?}: {}", a.head);
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            NOT_FOUND,
            "GET {target:?}"
        );
    }

    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get", "Head",
        "BREW",
    ] {
        let a = raw(
            port,
            format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(a.status, 405, "{method}: {}", a.head);
    }

    for path in ["/metrics", "/ready", "/healthy"] {
        let a = raw(
            port,
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.status, 200, "HEAD {path}: {}", a.head);
        assert!(
            a.body.is_empty(),
            "HEAD {path} sent a body of {} bytes ({:?}…): a HEAD response has none (RFC 9110 \
             9.3.2)",
            a.body.len(),
            String::from_utf8_lossy(&a.body[..a.body.len().min(40)])
        );
    }
    assert_alive(&mut rt, port);
    stop(&mut rt);
}

/// A request head of exactly 8 KiB is served and one byte more is 431; a client that sends
/// nothing, and one that trickles a byte every 200 ms, are disconnected 2 s after they connect,
/// unanswered.
#[test]
fn big_heads_get_431_and_slow_clients_are_cut_off_at_2_s() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rt, port) = idle_ringtail(dir.path());

    let head_of = |len: usize| -> Vec<u8> {
        let start = b"GET /ready HTTP/1.1\r\nX-Pad: ";
        let mut h = start.to_vec();
        h.resize(len - 4, b'p');
        h.extend_from_slice(b"\r\n\r\n");
        assert_eq!(h.len(), len);
        h
    };
    assert_eq!(raw(port, &head_of(MAX_HEAD)).status, 200);
    let a = raw(port, &head_of(MAX_HEAD + 1));
    assert_eq!(a.status, 431, "{}", a.head);
    assert_eq!(String::from_utf8_lossy(&a.body), "request head too large\n");
    // 64 KiB of headers, sent at once, are refused as soon as 8 KiB are in, not read to their end.
    let mut flood = TcpStream::connect(("127.0.0.1", port)).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = Instant::now();
    let big = head_of(64 << 10);
    let _ = flood.write_all(&big);
    let mut answer = Vec::new();
    let _ = flood.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Says nothing.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let n = silent.read_to_end(&mut got);
    let took = t.elapsed();
    assert!(matches!(n, Ok(0)), "{n:?} {got:?}");
    assert!(
        took >= HEAD_DEADLINE - Duration::from_millis(100)
            && took < HEAD_DEADLINE + Duration::from_millis(900),
        "a silent client was disconnected after {took:?}"
    );

    // Sends a byte every 200 ms, never finishing its head: the deadline is for the whole head.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = Instant::now();
    slow.write_all(b"GET /ready HTTP/1.1\r\n").unwrap();
    let mut buf = [0u8; 64];
    let (took, answered) = loop {
        assert!(t.elapsed() < Duration::from_secs(8), "never disconnected");
        match slow.read(&mut buf) {
            Ok(0) => break (t.elapsed(), 0),
            Ok(n) => break (t.elapsed(), n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if slow.write_all(b"X").is_err() {
                    break (t.elapsed(), 0);
                }
            }
            // Closed with our trickle unread: a reset.
            Err(_) => break (t.elapsed(), 0),
        }
    };
    assert_eq!(
        answered,
        0,
        "answered {:?}",
        String::from_utf8_lossy(&buf[..answered])
    );
    assert!(
        took >= HEAD_DEADLINE - Duration::from_millis(100)
            && took < HEAD_DEADLINE + Duration::from_millis(900),
        "a trickling client was disconnected after {took:?}"
    );
    assert_alive(&mut rt, port);
    stop(&mut rt);
}

/// With 15 idle connections held, a probe is still served (16 at once); with 16 held, a 17th
/// connection is answered 503 at once, and a probe that sends its request at once still gets
/// its real answer, not a wait and not "busy": otherwise any pod holding 16 sockets open would
/// fail the kubelet's probes (the liveness probe restarts ringtail). The idle ones are cut off
/// 2 s after they connected.
#[test]
fn sixteen_idle_connections_do_not_keep_probes_from_their_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rt, port) = idle_ringtail(dir.path());
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        c
    };
    // The kubelet's probe: one GET, its answer or the error, and how long it took.
    let probe = || {
        let t = Instant::now();
        let answer = (|| {
            let mut c = TcpStream::connect(("127.0.0.1", port))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut all = Vec::new();
            c.read_to_end(&mut all)?;
            Ok::<_, std::io::Error>(all)
        })();
        let answer = match answer {
            Ok(all) => {
                let a = parse_answer(&all, b"GET /ready");
                Ok((a.status, String::from_utf8_lossy(&a.body).into_owned()))
            }
            Err(e) => Err(e.to_string()),
        };
        (answer, t.elapsed())
    };

    let mut idle: Vec<(TcpStream, Instant)> = Vec::new();
    for _ in 0..MAX_CONNECTIONS - 1 {
        idle.push((connect(), Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(200));
    let with_15 = probe();
    // Its connection is let go just after it is answered.
    std::thread::sleep(Duration::from_millis(100));
    idle.push((connect(), Instant::now()));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let mut extra = connect();
    let mut busy = Vec::new();
    let _ = extra.read_to_end(&mut busy);
    let extra_took = t.elapsed();
    let with_16 = probe();

    let mut cut_after = Vec::new();
    for (mut c, since) in idle {
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        cut_after.push((since.elapsed(), r.is_ok() && got.is_empty()));
    }
    let after = probe();

    assert_eq!(
        with_15.0,
        Ok((200, "ready\n".to_string())),
        "with 15 idle connections"
    );
    let busy = String::from_utf8_lossy(&busy).into_owned();
    assert!(
        busy.starts_with("HTTP/1.1 503 ") && busy.ends_with("\r\n\r\nbusy\n"),
        "{busy:?}"
    );
    assert!(extra_took < Duration::from_secs(1), "{extra_took:?}");
    for (took, silent_close) in &cut_after {
        assert!(
            *silent_close
                && *took >= HEAD_DEADLINE - Duration::from_millis(100)
                && *took < HEAD_DEADLINE + Duration::from_secs(1),
            "idle connections: {cut_after:?}"
        );
    }
    assert_eq!(
        after.0,
        Ok((200, "ready\n".to_string())),
        "after the idle ones"
    );
    assert_alive(&mut rt, port);
    stop(&mut rt);
    assert!(
        with_16.1 < Duration::from_secs(1),
        "a probe waited {:?}",
        with_16.1
    );
    assert_eq!(
        with_16.0,
        Ok((200, "ready\n".to_string())),
        "a probe while 16 idle connections are held"
    );
}
