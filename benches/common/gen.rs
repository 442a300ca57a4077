//! Realistic pod log content for the benches, written the way containerd writes CRI files.
//!
//! The mix, by line count: about half zap-style JSON (a third of them with `trace_id`), a fifth
//! Istio/Envoy access-log lines with `Traceparent:[00-…]` (some `X-B3-Traceid:[…]`) in a Go map,
//! the rest klog (on stderr) and plain text (nginx, log4j, some non-ASCII), and one line in
//! ~1500 longer than 16 KiB, written as `P` records of exactly 16384 content bytes and an `F`.
//!
//! Every line carries a unique sequence number as the token `sq=<n>` (the first `sq=` of the
//! line), so that a receiver can count lost and duplicated lines. Deterministic for a seed.
#![allow(dead_code)]

use std::io::Write;

/// containerd's split size: content bytes per `P` record.
pub const CRI_SPLIT: usize = 16 * 1024;

/// What kind of line was generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Json,
    Istio,
    Klog,
    Plain,
    Long,
}

pub const KINDS: [Kind; 5] = [Kind::Json, Kind::Istio, Kind::Klog, Kind::Plain, Kind::Long];

impl Kind {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Istio => "istio",
            Kind::Klog => "klog",
            Kind::Plain => "plain",
            Kind::Long => "long(>16KiB)",
        }
    }
}

const NAMESPACES: [&str; 8] = [
    "shop",
    "payments",
    "identity",
    "monitoring",
    "kube-system",
    "ingress-nginx",
    "search",
    "checkout",
];
const APPS: [&str; 12] = [
    "orders",
    "cart",
    "billing",
    "auth",
    "gateway",
    "catalog",
    "inventory",
    "notifier",
    "search-api",
    "recommender",
    "coredns",
    "controller",
];
const CALLERS: [&str; 8] = [
    "server/handler.go:142",
    "orders/service.go:88",
    "db/pool.go:231",
    "grpc/interceptor.go:57",
    "cache/redis.go:119",
    "kafka/consumer.go:304",
    "http/middleware.go:66",
    "auth/jwt.go:41",
];
const MSGS: [&str; 10] = [
    "request completed",
    "order created",
    "cache miss",
    "retrying upstream call",
    "payment authorized",
    "user session refreshed",
    "published event",
    "slow query",
    "connection pool stats",
    "validated token",
];
const PATHS: [&str; 8] = [
    "/api/v1/orders",
    "/api/v1/cart/items",
    "/api/v2/catalog/products",
    "/healthz",
    "/api/v1/payments/authorize",
    "/graphql",
    "/api/v1/users/me",
    "/metrics",
];
const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const KLOG_FILES: [&str; 6] = [
    "controller.go:42",
    "reflector.go:289",
    "leaderelection.go:258",
    "shared_informer.go:313",
    "reconciler.go:117",
    "server.go:95",
];
const WORDS: [&str; 16] = [
    "processed",
    "batch",
    "of",
    "records",
    "for",
    "tenant",
    "acme",
    "in",
    "partition",
    "with",
    "latency",
    "ms",
    "café",
    "naïve",
    "東京",
    "ok",
];

/// A deterministic line generator with its own clock and sequence numbers.
pub struct Gen {
    rng: fastrand::Rng,
    /// CRI timestamp of the next line, Unix ns.
    pub ts_ns: i64,
    /// Sequence number of the next line.
    pub seq: u64,
    ts_buf: String,
    content: Vec<u8>,
    /// Lines generated, per [`Kind`].
    pub counts: [u64; 5],
}

impl Gen {
    pub fn new(seed: u64, start_ns: i64, first_seq: u64) -> Gen {
        Gen {
            rng: fastrand::Rng::with_seed(seed),
            ts_ns: start_ns,
            seq: first_seq,
            ts_buf: String::with_capacity(40),
            content: Vec::with_capacity(64 << 10),
            counts: [0; 5],
        }
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.rng.usize(..xs.len())]
    }

    fn hex(&mut self, out: &mut Vec<u8>, digits: usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for _ in 0..digits {
            out.push(HEX[self.rng.usize(..16)]);
        }
    }

    fn uuid(&mut self, out: &mut Vec<u8>) {
        for (i, n) in [8, 4, 4, 4, 12].into_iter().enumerate() {
            if i > 0 {
                out.push(b'-');
            }
            self.hex(out, n);
        }
    }

    fn clock(&self) -> (u64, u64, u64, u64) {
        let secs = self.ts_ns.div_euclid(1_000_000_000);
        let micros = (self.ts_ns.rem_euclid(1_000_000_000) / 1000) as u64;
        let sod = secs.rem_euclid(86_400) as u64;
        (sod / 3600, sod / 60 % 60, sod % 60, micros)
    }

    /// Appends one zap-style JSON line.
    pub fn json_line(&mut self, out: &mut Vec<u8>) {
        let r = self.rng.u32(..100);
        let level = match r {
            0..=69 => "info",
            70..=84 => "debug",
            85..=94 => "warn",
            _ => "error",
        };
        let ts = self.ts_ns as f64 / 1e9;
        let caller = self.pick(&CALLERS);
        let msg = self.pick(&MSGS);
        let seq = self.seq;
        let _ = write!(
            out,
            r#"{{"level":"{level}","ts":{ts:.7},"caller":"{caller}","msg":"{msg} sq={seq}""#
        );
        let method = self.pick(&METHODS);
        let path = self.pick(&PATHS);
        let status = if level == "error" { 503 } else { 200 };
        let dur = self.rng.f64() * 0.25;
        let _ = write!(
            out,
            r#","method":"{method}","path":"{path}/{}","status":{status},"duration":{dur:.6},"user_id":"u-{}""#,
            self.rng.u32(1000..99_999),
            self.rng.u32(1000..99_999)
        );
        if level == "error" {
            out.extend_from_slice(
                br#","error":"dial tcp 10.43.12.7:5432: connect: connection refused","stacktrace":"main.(*Server).handle\n\t/app/server/handler.go:142\nnet/http.HandlerFunc.ServeHTTP\n\t/usr/local/go/src/net/http/server.go:2166""#,
            );
        }
        if self.rng.u32(..3) == 0 {
            out.extend_from_slice(br#","trace_id":""#);
            self.hex(out, 32);
            out.extend_from_slice(br#"","span_id":""#);
            self.hex(out, 16);
            out.push(b'"');
        }
        out.push(b'}');
    }

    /// Appends one Istio/Envoy access-log line whose request headers are printed as a Go map.
    pub fn istio_line(&mut self, out: &mut Vec<u8>) {
        let (h, m, s, us) = self.clock();
        let method = self.pick(&METHODS);
        let path = self.pick(&PATHS);
        let app = self.pick(&APPS);
        let ns = self.pick(&NAMESPACES);
        let seq = self.seq;
        let _ = write!(
            out,
            "[2024-11-25T{h:02}:{m:02}:{s:02}.{:03}Z] \"{method} {path}?sq={seq} HTTP/1.1\" 200 - via_upstream - \"-\" {} {} {} {} \"-\" \"Go-http-client/1.1\" \"",
            us / 1000,
            self.rng.u32(0..2000),
            self.rng.u32(100..40_000),
            self.rng.u32(1..300),
            self.rng.u32(1..300),
        );
        self.uuid(out);
        let _ = write!(
            out,
            "\" \"{app}.{ns}.svc.cluster.local:8080\" \"10.42.{}.{}:8080\" inbound|8080|| 127.0.0.6:{} 10.42.1.17:8080 10.42.0.9:{} outbound_.8080_._.{app}.{ns}.svc.cluster.local default headers=map[Accept:[application/json] ",
            self.rng.u32(0..8),
            self.rng.u32(2..250),
            self.rng.u32(30_000..60_000),
            self.rng.u32(30_000..60_000),
        );
        if self.rng.u32(..10) == 0 {
            out.extend_from_slice(b"X-B3-Sampled:[1] X-B3-Spanid:[");
            self.hex(out, 16);
            out.extend_from_slice(b"] X-B3-Traceid:[");
            self.hex(out, 32);
            out.extend_from_slice(b"]");
        } else {
            out.extend_from_slice(b"Traceparent:[00-");
            self.hex(out, 32);
            out.push(b'-');
            self.hex(out, 16);
            out.extend_from_slice(b"-01]");
        }
        out.extend_from_slice(b" User-Agent:[Go-http-client/1.1] X-Request-Id:[");
        self.uuid(out);
        out.extend_from_slice(b"]]");
    }

    /// Appends one klog line (`I1125 10:00:00.123456       1 file.go:42] msg`).
    pub fn klog_line(&mut self, out: &mut Vec<u8>) {
        let (h, m, s, us) = self.clock();
        let sev = match self.rng.u32(..20) {
            0 => 'E',
            1..=2 => 'W',
            _ => 'I',
        };
        let file = self.pick(&KLOG_FILES);
        let ns = self.pick(&NAMESPACES);
        let app = self.pick(&APPS);
        let seq = self.seq;
        let _ = write!(
            out,
            "{sev}1125 {h:02}:{m:02}:{s:02}.{us:06}       1 {file}] \"Reconciling object\" sq={seq} controller=\"deployment\" object=\"{ns}/{app}\" reconcileID=\"",
        );
        self.uuid(out);
        out.push(b'"');
    }

    /// Appends one plain-text line: nginx access log, log4j, or free text.
    pub fn plain_line(&mut self, out: &mut Vec<u8>) {
        let (h, m, s, us) = self.clock();
        let seq = self.seq;
        match self.rng.u32(..3) {
            0 => {
                let path = self.pick(&PATHS);
                let _ = write!(
                    out,
                    "10.42.0.{} - - [25/Nov/2024:{h:02}:{m:02}:{s:02} +0000] \"GET {path}?sq={seq} HTTP/1.1\" 200 {} \"-\" \"kube-probe/1.30\" {} 0.00{} [upstream] [] 10.42.3.8:8080 {} 0.003 200 ",
                    self.rng.u32(2..250),
                    self.rng.u32(2..9000),
                    self.rng.u32(100..900),
                    self.rng.u32(1..9),
                    self.rng.u32(2..9000),
                );
                self.hex(out, 32);
            }
            1 => {
                let app = self.pick(&APPS);
                let _ = write!(
                    out,
                    "2024-11-25 {h:02}:{m:02}:{s:02},{:03} INFO  [http-nio-8080-exec-{}] c.e.{app}.OrderService - Processed order {} for customer {} sq={seq}",
                    us / 1000,
                    self.rng.u32(1..40),
                    self.rng.u32(1..999_999),
                    self.rng.u32(1..99_999),
                );
            }
            _ => {
                let _ = write!(out, "sq={seq}");
                for _ in 0..self.rng.usize(6..24) {
                    out.push(b' ');
                    let w = self.pick(&WORDS);
                    out.extend_from_slice(w.as_bytes());
                }
            }
        }
    }

    /// Appends one line of 17..70 KiB: a JSON line with a big payload, or a long text dump.
    pub fn long_line(&mut self, out: &mut Vec<u8>) {
        let len = self.rng.usize(17 << 10..70 << 10);
        let seq = self.seq;
        let start = out.len();
        let json = self.rng.bool();
        if json {
            let _ = write!(
                out,
                r#"{{"level":"debug","ts":{:.7},"caller":"api/dump.go:77","msg":"response body sq={seq}","body":""#,
                self.ts_ns as f64 / 1e9
            );
        } else {
            let _ = write!(out, "DUMP sq={seq} state=");
        }
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let body = len.saturating_sub(out.len() - start + 2);
        for _ in 0..body {
            out.push(B64[self.rng.usize(..64)]);
        }
        if json {
            out.extend_from_slice(b"\"}");
        }
        // An exact multiple of the split size would end in an empty `F`; keep it simple.
        if (out.len() - start).is_multiple_of(CRI_SPLIT) {
            out.push(b'=');
        }
    }

    /// Appends the content of one line (no newline), of a kind drawn from the mix; returns its
    /// kind and whether it goes to stderr.
    pub fn content(&mut self, out: &mut Vec<u8>) -> (Kind, bool) {
        let r = self.rng.u32(..1500);
        let kind = match r {
            0 => Kind::Long,
            1..=750 => Kind::Json,
            751..=1050 => Kind::Istio,
            1051..=1280 => Kind::Klog,
            _ => Kind::Plain,
        };
        match kind {
            Kind::Json => self.json_line(out),
            Kind::Istio => self.istio_line(out),
            Kind::Klog => self.klog_line(out),
            Kind::Plain => self.plain_line(out),
            Kind::Long => self.long_line(out),
        }
        let stderr = kind == Kind::Klog || self.rng.u32(..20) == 0;
        self.counts[kind.index()] += 1;
        self.seq += 1;
        self.ts_ns += self.rng.i64(1000..2_000_000);
        (kind, stderr)
    }

    /// Appends one line as CRI records (`P…P F`, containerd's split at 16 KiB) to `out`.
    pub fn cri_line(&mut self, out: &mut Vec<u8>) -> Kind {
        let mut content = std::mem::take(&mut self.content);
        content.clear();
        let ts = self.ts_ns;
        let (kind, stderr) = self.content(&mut content);
        self.ts_buf.clear();
        ringtail::timefmt::format_rfc3339_ns(ts, &mut self.ts_buf);
        let stream: &[u8] = if stderr { b" stderr " } else { b" stdout " };
        let mut rest = &content[..];
        while rest.len() > CRI_SPLIT {
            let (part, tail) = rest.split_at(CRI_SPLIT);
            out.extend_from_slice(self.ts_buf.as_bytes());
            out.extend_from_slice(stream);
            out.extend_from_slice(b"P ");
            out.extend_from_slice(part);
            out.push(b'\n');
            rest = tail;
        }
        out.extend_from_slice(self.ts_buf.as_bytes());
        out.extend_from_slice(stream);
        out.extend_from_slice(b"F ");
        out.extend_from_slice(rest);
        out.push(b'\n');
        self.content = content;
        kind
    }

    /// Whole CRI lines, as many as fit in `max` bytes (at least one).
    pub fn cri_block(&mut self, max: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(max + (80 << 10));
        let mut line = Vec::with_capacity(80 << 10);
        loop {
            line.clear();
            self.cri_line(&mut line);
            if !out.is_empty() && out.len() + line.len() > max {
                return out;
            }
            out.extend_from_slice(&line);
        }
    }

    /// `n` line contents of one kind (no CRI framing), for the per-function benches.
    pub fn contents(&mut self, kind: Kind, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut out = Vec::new();
                match kind {
                    Kind::Json => self.json_line(&mut out),
                    Kind::Istio => self.istio_line(&mut out),
                    Kind::Klog => self.klog_line(&mut out),
                    Kind::Plain => self.plain_line(&mut out),
                    Kind::Long => self.long_line(&mut out),
                }
                self.seq += 1;
                self.ts_ns += 1_000_000;
                out
            })
            .collect()
    }
}

/// The sequence number of a received line: the digits after its first `sq=`.
pub fn seq_of(line: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(line, b"sq=")? + 3;
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Stream labels like discovery builds for a container's log file.
pub fn labels(i: usize) -> std::sync::Arc<ringtail::entry::LabelSet> {
    let ns = NAMESPACES[i % NAMESPACES.len()];
    let app = APPS[i % APPS.len()];
    let container = if i.is_multiple_of(2) {
        app
    } else {
        "istio-proxy"
    };
    ringtail::entry::LabelSet::new([
        ("namespace", ns.to_string()),
        ("pod", format!("{app}-7d9f8b6c4-{i:05}")),
        ("container", container.to_string()),
        ("node", "bench-node".to_string()),
        ("job", format!("{ns}/{container}")),
    ])
}

/// Names for file `i` of a generated tree: (namespace, pod, uid, container).
pub fn file_names(i: usize) -> (String, String, String, String) {
    let pod_no = i / 2;
    let ns = NAMESPACES[pod_no % NAMESPACES.len()];
    let app = APPS[pod_no % APPS.len()];
    let container = if i.is_multiple_of(2) {
        app
    } else {
        "istio-proxy"
    };
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        0x5eed_0000u32.wrapping_add(pod_no as u32),
        pod_no % 0xffff,
        pod_no % 0xfff,
        (pod_no * 7) % 0xfff,
        (pod_no as u64).wrapping_mul(0x9e37_79b9)
    );
    (
        ns.to_string(),
        format!("{app}-7d9f8b6c4-{pod_no:05}"),
        uid,
        container.to_string(),
    )
}
