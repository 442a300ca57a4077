//! Tests of the test-support code itself (no ringtail process needed).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use serde_json::{json, Value};
use support::cri::{gunzip, parse_cri, rotation_suffix};
use support::http::{self, HttpConn};
use support::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const PB: (&str, &str) = ("Content-Type", "application/x-protobuf");

#[test]
fn receiver_decodes_exact_entries_labels_metadata_and_headers() {
    let rx = LokiReceiver::start();
    assert!(rx.url().starts_with("http://127.0.0.1:"));
    assert!(rx.url().ends_with("/loki/api/v1/push"));
    let body = encode_push(vec![
        push_stream(
            r#"{app="we\"ird\\na\nme", namespace="ns", empty=""}"#,
            vec![
                push_entry(
                    1_700_000_000_123_456_789,
                    "héllo wörld ✓",
                    &[("stream", "stdout"), ("trace_id", "abc")],
                ),
                push_entry(1_700_000_000_000_000_000, "", &[]),
            ],
        ),
        push_stream(
            "{job=\"ns/c\"}",
            vec![push_entry(5, "second stream", &[("level", "warn")])],
        ),
    ]);
    let resp = http::post(
        &rx.url(),
        &[
            PB,
            ("Content-Encoding", "snappy"),
            ("X-Scope-OrgID", "tenant-a"),
            ("Authorization", "Bearer s3cret"),
        ],
        &body,
    )
    .unwrap();
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert!(resp.body.is_empty());

    let got = rx.entries();
    assert_eq!(got.len(), 3, "{}", rx.summary());
    assert_eq!(
        got[0].labels,
        map(&[("app", "we\"ird\\na\nme"), ("namespace", "ns")])
    );
    assert_eq!(got[0].ts_ns, 1_700_000_000_123_456_789);
    assert_eq!(got[0].line, "héllo wörld ✓");
    assert_eq!(
        got[0].metadata,
        map(&[("stream", "stdout"), ("trace_id", "abc")])
    );
    assert_eq!(got[0].batch, 0);
    assert_eq!(got[1].line, "");
    assert_eq!(got[1].ts_ns, 1_700_000_000_000_000_000);
    assert!(got[1].metadata.is_empty());
    assert_eq!(got[2].labels, map(&[("job", "ns/c")]));
    assert_eq!(got[2].ts_ns, 5);
    assert_eq!(got[2].meta("level"), Some("warn"));

    assert_eq!(rx.requests(), 1);
    assert_eq!(rx.status_counts(), BTreeMap::from([(204, 1)]));
    let h = rx.headers_of_request(0);
    assert_eq!(h.get("x-scope-orgid").map(String::as_str), Some("tenant-a"));
    assert_eq!(
        h.get("authorization").map(String::as_str),
        Some("Bearer s3cret")
    );
    assert_eq!(
        h.get("content-encoding").map(String::as_str),
        Some("snappy")
    );
    let log = rx.log();
    assert_eq!(log[0].streams, 2);
    assert_eq!(log[0].entries, 3);
    assert_eq!(log[0].header("X-Scope-OrgID"), Some("tenant-a"));
}

#[test]
fn receiver_sequences_programmed_statuses_and_records_only_2xx() {
    let rx = LokiReceiver::start();
    rx.set_responses(vec![429, 500]);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let body = encode_push(vec![push_stream(
            "{a=\"b\"}",
            vec![push_entry(1_000 + i, &format!("line {i}"), &[])],
        )]);
        let resp = http::post(&rx.url(), &[PB], &body).unwrap();
        if resp.status == 429 {
            assert!(
                resp.text().starts_with("Ingestion rate limit exceeded"),
                "{}",
                resp.text()
            );
        }
        statuses.push(resp.status);
    }
    assert_eq!(statuses, vec![429, 500, 204, 204]);
    assert_eq!(rx.lines(), vec!["line 2", "line 3"]);
    let batches: Vec<usize> = rx.entries().iter().map(|e| e.batch).collect();
    assert_eq!(batches, vec![2, 3]);
    assert_eq!(
        rx.status_counts(),
        BTreeMap::from([(204, 2), (429, 1), (500, 1)])
    );

    rx.set_default(503);
    let body = encode_push(vec![push_stream(
        "{a=\"b\"}",
        vec![push_entry(1, "x", &[])],
    )]);
    assert_eq!(http::post(&rx.url(), &[PB], &body).unwrap().status, 503);
    rx.set_default(204);

    rx.fail_for(Duration::from_millis(300), 502);
    assert_eq!(http::post(&rx.url(), &[PB], &body).unwrap().status, 502);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(http::post(&rx.url(), &[PB], &body).unwrap().status, 204);

    // A dropped connection is a transport error for the client.
    rx.set_responses(vec![DROP_CONNECTION]);
    assert!(http::post(&rx.url(), &[PB], &body).is_err());
    assert_eq!(rx.count_status(DROP_CONNECTION), 1);
    assert_eq!(http::post(&rx.url(), &[PB], &body).unwrap().status, 204);
    assert_eq!(rx.entry_count(), 4);
}

#[test]
fn receiver_rejects_bad_labels_and_bad_bodies_with_400() {
    let rx = LokiReceiver::start();
    let post = |labels: &str| {
        let body = encode_push(vec![push_stream(labels, vec![push_entry(1, "x", &[])])]);
        http::post(&rx.url(), &[PB], &body).unwrap()
    };
    for bad in [
        "{a=b}",
        "{a=\"b\"",
        "a=\"b\"",
        "{a=\"b\" c=\"d\"}",
        "{1a=\"b\"}",
        "{a=\"b\\q\"}",
        "{a=\"b\"} x",
        "{}",
        "{a=\"\"}",
        "{a=\"b\", a=\"c\"}",
    ] {
        let resp = post(bad);
        assert_eq!(resp.status, 400, "labels {bad:?}: {}", resp.text());
    }
    assert!(post("{a=b}").text().contains("Error parsing labels"));
    assert_eq!(rx.entry_count(), 0);
    // A rejected request does not consume a programmed status.
    rx.set_responses(vec![429]);
    assert_eq!(post("{a=b}").status, 400);
    assert_eq!(post("{a=\"b\"}").status, 429);
    assert_eq!(post("{ a = \"b\" , c='d\\'', e=`x\\y`, }").status, 204);
    assert_eq!(
        rx.entries()[0].labels,
        map(&[("a", "b"), ("c", "d'"), ("e", "x\\y")])
    );

    // Invalid UTF-8 in a line: prost refuses to decode the string field.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawEntry {
        #[prost(message, optional, tag = "1")]
        timestamp: Option<ringtail::sink::proto::Timestamp>,
        #[prost(bytes = "vec", tag = "2")]
        line: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawStream {
        #[prost(string, tag = "1")]
        labels: String,
        #[prost(message, repeated, tag = "2")]
        entries: Vec<RawEntry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawPush {
        #[prost(message, repeated, tag = "1")]
        streams: Vec<RawStream>,
    }
    let raw = RawPush {
        streams: vec![RawStream {
            labels: "{a=\"b\"}".into(),
            entries: vec![RawEntry {
                timestamp: Some(ringtail::sink::proto::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                line: vec![b'o', b'k', 0xff, 0xfe],
            }],
        }],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&raw.encode_to_vec())
        .unwrap();
    let resp = http::post(&rx.url(), &[PB], &body).unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());

    // Framed snappy is not what Loki takes.
    let plain = ringtail::sink::proto::PushRequest {
        streams: vec![push_stream("{a=\"b\"}", vec![push_entry(1, "x", &[])])],
    }
    .encode_to_vec();
    let mut framed = snap::write::FrameEncoder::new(Vec::new());
    std::io::Write::write_all(&mut framed, &plain).unwrap();
    let framed = framed.into_inner().unwrap();
    assert_eq!(http::post(&rx.url(), &[PB], &framed).unwrap().status, 400);
    // Unsnappied protobuf neither.
    assert_eq!(http::post(&rx.url(), &[PB], &plain).unwrap().status, 400);
    // Wrong content type / encoding; missing timestamp; zero streams; a too long line.
    let good = encode_push(vec![push_stream(
        "{a=\"b\"}",
        vec![push_entry(1, "x", &[])],
    )]);
    assert_eq!(
        http::post(&rx.url(), &[("Content-Type", "application/json")], &good)
            .unwrap()
            .status,
        415
    );
    assert_eq!(
        http::post(&rx.url(), &[PB, ("Content-Encoding", "gzip")], &good)
            .unwrap()
            .status,
        400
    );
    let mut no_ts = push_entry(1, "x", &[]);
    no_ts.timestamp = None;
    let resp = http::post(
        &rx.url(),
        &[],
        &encode_push(vec![push_stream("{a=\"b\"}", vec![no_ts])]),
    )
    .unwrap();
    assert_eq!(resp.status, 400);
    assert!(
        resp.text().contains("has timestamp too old"),
        "{}",
        resp.text()
    );
    assert_eq!(
        http::post(&rx.url(), &[PB], &encode_push(vec![]))
            .unwrap()
            .status,
        422
    );
    let long = "x".repeat(256 * 1024 + 1);
    let resp = http::post(
        &rx.url(),
        &[PB],
        &encode_push(vec![push_stream(
            "{a=\"b\"}",
            vec![push_entry(1, &long, &[])],
        )]),
    )
    .unwrap();
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("Max entry size"), "{}", resp.text());
    // Other paths.
    assert_eq!(
        http::post(&format!("http://{}/nope", rx.addr()), &[PB], &good)
            .unwrap()
            .status,
        404
    );
    assert_eq!(rx.entry_count(), 1, "{}", rx.summary());
}

#[test]
fn parse_labels_handles_go_escapes() {
    assert_eq!(
        parse_labels(r#"{a="\\ \" \n \t \x41 \101 \u00e9 \U0001F600"}"#).unwrap(),
        vec![("a".to_string(), "\\ \" \n \t A A é 😀".to_string())]
    );
    assert_eq!(parse_labels("{}").unwrap(), Vec::<(String, String)>::new());
    assert!(parse_labels("{a=\"x\ny\"}").is_err());
    assert!(parse_labels("{a=\"\\xff\"}").is_err());
}

#[test]
fn receiver_keep_alive_and_connection_close() {
    let rx = LokiReceiver::start();
    let body = encode_push(vec![push_stream(
        "{a=\"b\"}",
        vec![push_entry(1, "x", &[])],
    )]);
    let mut conn = HttpConn::connect(rx.addr()).unwrap();
    for _ in 0..3 {
        let r = conn.request("POST", PUSH_PATH, &[PB], &body).unwrap();
        assert_eq!(r.status, 204);
    }
    rx.set_responses(vec![400]);
    let r = conn.request("POST", PUSH_PATH, &[PB], &body).unwrap();
    assert_eq!(r.status, 400);
    assert!(r
        .text()
        .starts_with("entry for stream '{a=\"b\"}' has timestamp too old"));
    let r = conn
        .request("POST", PUSH_PATH, &[PB, ("Connection", "close")], &body)
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.is_closed_by_peer());
    assert_eq!(rx.connections(), 1);
    assert_eq!(rx.requests(), 5);
    assert_eq!(rx.entry_count(), 4);

    // Chunked request bodies are read too.
    let mut conn = HttpConn::connect(rx.addr()).unwrap();
    let mut chunked = Vec::new();
    for part in body.chunks(7) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = conn
        .request(
            "POST",
            PUSH_PATH,
            &[PB, ("Transfer-Encoding", "chunked")],
            &chunked,
        )
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(rx.entry_count(), 5);
}

#[test]
fn receiver_delay_and_waits() {
    let rx = LokiReceiver::start();
    rx.set_delay(Duration::from_millis(200));
    let url = rx.url();
    let t = std::thread::spawn(move || {
        let body = encode_push(vec![push_stream(
            "{a=\"b\"}",
            vec![push_entry(1, "x", &[])],
        )]);
        let start = Instant::now();
        let r = http::post(&url, &[PB], &body).unwrap();
        (r.status, start.elapsed())
    });
    assert!(rx.wait_for_entries(1, Duration::from_secs(5)));
    assert!(!rx.wait_for_entries(2, Duration::from_millis(50)));
    let (status, took) = t.join().unwrap();
    assert_eq!(status, 204);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    let start = Instant::now();
    assert!(rx.wait_quiet(Duration::from_millis(100)));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(rx.wait_for_requests(1, Duration::from_secs(1)));
}

#[test]
fn timestamps_format_like_go_rfc3339nano() {
    let s = Clock::START_NS;
    assert_eq!(format_rfc3339nano(s, 0), "2023-11-14T22:13:20Z");
    assert_eq!(
        format_rfc3339nano(s + 1_000_000, 0),
        "2023-11-14T22:13:20.001Z"
    );
    assert_eq!(
        format_rfc3339nano(s + 10_000_000, 0),
        "2023-11-14T22:13:20.01Z"
    );
    assert_eq!(
        format_rfc3339nano(s + 100_000_000, 0),
        "2023-11-14T22:13:20.1Z"
    );
    assert_eq!(
        format_rfc3339nano(s + 123_456_789, 0),
        "2023-11-14T22:13:20.123456789Z"
    );
    assert_eq!(
        format_rfc3339nano(s + 1_000_000, 3600),
        "2023-11-14T23:13:20.001+01:00"
    );
    assert_eq!(
        format_rfc3339nano(s, -(5 * 3600 + 30 * 60)),
        "2023-11-14T16:43:20-05:30"
    );
    assert_eq!(format_rfc3339nano(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(
        format_rfc3339nano(951_782_400 * 1_000_000_000, 0),
        "2000-02-29T00:00:00Z"
    );
    for ts in [s, s + 1, s + 1_000_000, s + 123_456_789, 0, 9_517_824_005] {
        for off in [0, 3600, -19800] {
            assert_eq!(
                parse_rfc3339nano(&format_rfc3339nano(ts, off)),
                Some(ts),
                "{ts} {off}"
            );
        }
    }
    assert_eq!(rotation_suffix(1_700_000_000), "20231114-221320");
    let c = Clock::new();
    assert_eq!(c.next(), s);
    assert_eq!(c.next(), s + 1_000_000);
    assert_eq!(c.clone().next(), s + 2_000_000);
    assert_eq!(c.peek(), s + 3_000_000);
}

#[test]
fn cri_writer_splits_long_lines_like_containerd() {
    let root = tempfile::tempdir().unwrap();
    let pod = PodDir::new(root.path(), "ns", "web-0", "1234-abcd");
    let mut c = pod.container("app");
    assert_eq!(
        c.path(0),
        root.path()
            .join("ns_web-0_1234-abcd")
            .join("app")
            .join("0.log")
    );
    let t0 = c.write_line(Stream::Stdout, "short");
    assert_eq!(t0, Clock::START_NS);
    let long: Vec<u8> = (0..100 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let stamps = c.write_line_records(Stream::Stderr, &long);
    assert_eq!(stamps.len(), 7);
    let t_exact = c.write_line(Stream::Stdout, vec![b'z'; 2 * CRI_MAX_LINE]);
    let t_empty = c.write_line(Stream::Stdout, "");
    c.set_zone_offset(3600);
    let t_off = c.write_line(Stream::Stdout, "offset");

    let data = fs::read(c.path(0)).unwrap();
    let recs = parse_cri(&data);
    assert_eq!(recs.len(), 1 + 7 + 2 + 1 + 1);
    assert_eq!(recs[0].0, "2023-11-14T22:13:20Z");
    assert_eq!(
        (recs[0].1.as_str(), recs[0].2.as_str(), recs[0].3.as_slice()),
        ("stdout", "F", &b"short"[..])
    );
    let split = &recs[1..8];
    let tags: Vec<&str> = split.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(tags, vec!["P", "P", "P", "P", "P", "P", "F"]);
    for r in &split[..6] {
        assert_eq!(r.3.len(), CRI_MAX_LINE);
        assert_eq!(r.1, "stderr");
    }
    assert_eq!(split[6].3.len(), 100 * 1024 - 6 * CRI_MAX_LINE);
    let joined: Vec<u8> = split.iter().flat_map(|r| r.3.clone()).collect();
    assert_eq!(joined, long);
    for (r, ts) in split.iter().zip(&stamps) {
        assert_eq!(parse_rfc3339nano(&r.0), Some(*ts));
    }
    assert_eq!(stamps[0], Clock::START_NS + 1_000_000);
    // Exactly 2 × 16384 bytes: P + F, no empty F.
    assert_eq!((recs[8].2.as_str(), recs[9].2.as_str()), ("P", "F"));
    assert_eq!(recs[9].3.len(), CRI_MAX_LINE);
    assert_eq!(parse_rfc3339nano(&recs[8].0), Some(t_exact));
    // The empty line is "<ts> stdout F \n".
    let empty_rec = format!("{} stdout F \n", format_rfc3339nano(t_empty, 0));
    assert!(String::from_utf8_lossy(&data).contains(&empty_rec));
    assert!(recs[11].0.ends_with("+01:00"), "{}", recs[11].0);
    assert_eq!(parse_rfc3339nano(&recs[11].0), Some(t_off));
}

#[test]
fn cri_rotation_is_kubelets() {
    let root = tempfile::tempdir().unwrap();
    let pod = PodDir::new(root.path(), "ns", "p", "uid");
    let mut c = pod.container("c");
    c.write_line(Stream::Stdout, "one");
    let r1 = c.rotate();
    c.write_line(Stream::Stdout, "two");
    let r2 = c.rotate();
    c.write_line(Stream::Stdout, "three");
    let r3 = c.rotate();
    c.write_line(Stream::Stdout, "four");
    assert!(r1 < r2 && r2 < r3);

    let names: Vec<String> = c
        .all_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[0], "0.log");
    assert_eq!(names.iter().filter(|n| n.ends_with(".gz")).count(), 2);
    assert!(!names.iter().any(|n| n.ends_with(".tmp")));
    let plain: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("0.log.") && !n.ends_with(".gz"))
        .collect();
    assert_eq!(plain.len(), 1);
    assert_eq!(c.dir().join(plain[0]), r3);
    let suffix = plain[0].strip_prefix("0.log.").unwrap();
    assert_eq!(suffix.len(), "YYYYMMDD-HHMMSS".len());
    assert_eq!(&suffix[8..9], "-");

    let gz1 = format!("{}.gz", r1.display());
    let content = |bytes: &[u8]| -> Vec<String> {
        parse_cri(bytes)
            .into_iter()
            .map(|r| String::from_utf8(r.3).unwrap())
            .collect()
    };
    assert_eq!(content(&gunzip(gz1.as_ref())), vec!["one"]);
    assert_eq!(content(&fs::read(&r3).unwrap()), vec!["three"]);
    assert_eq!(content(&fs::read(c.path(0)).unwrap()), vec!["four"]);

    // Rename without reopen: writes go to the renamed inode until containerd reopens.
    let r4 = c.rotate_rename();
    c.write_line(Stream::Stdout, "late");
    assert!(!c.path(0).exists());
    c.reopen();
    c.write_line(Stream::Stdout, "five");
    assert_eq!(content(&fs::read(&r4).unwrap()), vec!["four", "late"]);
    assert_eq!(content(&fs::read(c.path(0)).unwrap()), vec!["five"]);

    // max_files 5: at most 3 rotated files before the rename, so 4 after it.
    c.rotate();
    c.rotate();
    assert_eq!(c.rotated_files().len(), 4);
    assert!(!c.dir().join(gz1).exists(), "oldest was removed");

    // Truncate in place, restart to 1.log.
    c.write_line(Stream::Stdout, "six");
    c.truncate();
    assert_eq!(c.size(), 0);
    c.write_line(Stream::Stdout, "seven");
    assert_eq!(content(&fs::read(c.path(0)).unwrap()), vec!["seven"]);
    let p1 = c.restart();
    assert_eq!(p1, c.dir().join("1.log"));
    c.write_line(Stream::Stdout, "eight");
    assert_eq!(content(&fs::read(&p1).unwrap()), vec!["eight"]);
    assert_eq!(content(&fs::read(c.path(0)).unwrap()), vec!["seven"]);
}

#[test]
fn metrics_helpers_parse_prometheus_text() {
    let text = "# HELP x_total help\n# TYPE x_total counter\n\
                x_total{reason=\"a\"} 3\nx_total{reason=\"b\"} 4.5\nx_total_other 9\n\
                loki_write_sent_entries_total 12\n";
    assert_eq!(metric_value(text, "x_total{reason=\"b\"}"), Some(4.5));
    assert_eq!(
        metric_value(text, "loki_write_sent_entries_total"),
        Some(12.0)
    );
    assert_eq!(metric_value(text, "x_total"), None);
    assert_eq!(metric_sum(text, "x_total"), 7.5);
    assert!(free_port() > 0);
    // A server that is not ringtail: /metrics is 404 there.
    let rx = LokiReceiver::start();
    assert!(try_metrics(rx.port()).is_err());
    let yaml = pods_only_config(
        std::path::Path::new("/tmp/d"),
        std::path::Path::new("/tmp/p"),
        &rx.url(),
        9999,
    );
    assert!(yaml.contains("listen: 127.0.0.1:9999"));
    assert!(bin_path().ends_with("ringtail"));
}

// ---- FakeKubeApi ----

/// `GET path` on a fresh connection; the status and the JSON body.
fn kube_get(api: &FakeKubeApi, path: &str) -> (u16, Value) {
    kube_send(api, "GET", path, None, &Value::Null)
}

/// `method path` with `body` as JSON (none when null) on a fresh connection; the status and the
/// JSON body, which must be `application/json` whatever the status.
fn kube_send(
    api: &FakeKubeApi,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut headers = vec![("Accept", "application/json")];
    headers.extend(content_type.map(|ct| ("Content-Type", ct)));
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let resp = http::request(api.addr(), method, path, &headers, &body).unwrap();
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{method} {path}"
    );
    let json = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", resp.text()));
    (resp.status, json)
}

/// A failure `Status` as the API server writes it.
fn kube_status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
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
    s
}

/// `namespace/name` of every item of a list.
fn item_keys(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {list}"))
        .iter()
        .map(|i| {
            format!("{}/{}", i["metadata"]["namespace"], i["metadata"]["name"]).replace('"', "")
        })
        .collect()
}

/// (type, name, resourceVersion) of a watch event.
fn summary(ev: &Value) -> (String, String, String) {
    let meta = &ev["object"]["metadata"];
    (
        ev["type"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
        meta["resourceVersion"].as_str().unwrap_or("").to_string(),
    )
}

fn sum(kind: &str, name: &str, rv: &str) -> (String, String, String) {
    (kind.to_string(), name.to_string(), rv.to_string())
}

/// Asserts `ts` is an RFC 3339 UTC time in whole seconds, within the last minute.
fn assert_recent(ts: &Value) {
    let s = ts.as_str().unwrap_or_else(|| panic!("not a string: {ts}"));
    assert!(s.ends_with('Z') && !s.contains('.'), "{s}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let age = i64::try_from(now.as_nanos()).unwrap() - parse_rfc3339nano(s).unwrap();
    assert!((0..60_000_000_000).contains(&age), "{s}");
}

/// A watch request on its own connection, read one chunk (one event) at a time as the server
/// flushes them; http.rs's client would wait for the end of the body.
struct WatchStream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl WatchStream {
    /// Sends `GET path` and reads the response head.
    fn open(api: &FakeKubeApi, path: &str) -> (u16, BTreeMap<String, String>, WatchStream) {
        let stream = TcpStream::connect(api.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut w = WatchStream {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let (status, headers) = w.reopen(path);
        (status, headers, w)
    }

    /// Sends `GET path` on the same connection (after the stream has ended, as kube-rs reuses
    /// its connections) and reads the response head.
    fn reopen(&mut self, path: &str) -> (u16, BTreeMap<String, String>) {
        self.send(path);
        let line = http::read_head_line(&mut self.reader).unwrap().unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        (status, http::read_headers(&mut self.reader).unwrap())
    }

    fn send(&mut self, path: &str) {
        let addr = self.writer.peer_addr().unwrap();
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
        )
        .unwrap();
    }

    /// The next event; `None` at the end of the stream (the zero-length chunk).
    fn next(&mut self) -> Option<Value> {
        let size_line = http::read_head_line(&mut self.reader)
            .unwrap()
            .expect("EOF inside a watch stream");
        let size = usize::from_str_radix(&size_line, 16).unwrap();
        let data = http::read_exact_vec(&mut self.reader, size).unwrap();
        assert_eq!(
            http::read_head_line(&mut self.reader).unwrap().as_deref(),
            Some("")
        );
        if size == 0 {
            return None;
        }
        let line = String::from_utf8(data).unwrap();
        assert_eq!(line.find('\n'), Some(line.len() - 1), "one event per chunk");
        Some(serde_json::from_str(&line).unwrap())
    }

    /// The next event that is not a BOOKMARK.
    fn next_change(&mut self) -> Option<Value> {
        loop {
            let ev = self.next()?;
            if ev["type"] != "BOOKMARK" {
                return Some(ev);
            }
        }
    }

    fn closed_by_peer(&mut self) -> bool {
        matches!(self.reader.fill_buf(), Ok([]))
    }
}

/// The first page kube-runtime 5's watcher asks for (`watcher::Config::default()` with
/// `.fields("spec.nodeName=node-a")`).
const WATCHER_LIST: &str = "/api/v1/pods?&fieldSelector=spec.nodeName%3Dnode-a&limit=500";

/// kube-runtime 5's watch after that list, from revision `rv`.
fn watcher_watch(rv: &str) -> String {
    format!(
        "/api/v1/pods?&watch=true&timeoutSeconds=290&fieldSelector=spec.nodeName%3Dnode-a\
         &allowWatchBookmarks=true&resourceVersion={rv}"
    )
}

#[test]
fn kubeapi_lists_pods_by_field_and_label_selectors() {
    let api = FakeKubeApi::start();
    assert_eq!(api.url(), format!("http://127.0.0.1:{}", api.addr().port()));
    let web = FakeKubeApi::pod(
        "default",
        "web-0",
        "uid-web-0",
        "node-a",
        &[("app", "web")],
        &[("note", "x")],
    );
    assert_eq!(api.put_pod(web.clone()), "1");
    let proxy = FakeKubeApi::pod(
        "kube-system",
        "proxy",
        "uid-p",
        "node-a",
        &[("app", "px")],
        &[],
    );
    assert_eq!(api.put_pod(proxy), "2");
    let db = FakeKubeApi::pod(
        "default",
        "db-0",
        "uid-db-0",
        "node-b",
        &[("app", "db")],
        &[],
    );
    assert_eq!(api.put_pod(db), "3");
    let pending = FakeKubeApi::pod("default", "pending", "uid-pending", "", &[], &[]);
    assert_eq!(
        pending,
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pending", "namespace": "default", "uid": "uid-pending"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Pending"},
        })
    );
    assert_eq!(api.put_pod(pending), "4");

    let (code, list) = kube_get(&api, WATCHER_LIST);
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"], json!({"resourceVersion": "4"}));
    assert_eq!(item_keys(&list), ["default/web-0", "kube-system/proxy"]);
    let created = &list["items"][0]["metadata"]["creationTimestamp"];
    assert_recent(created);
    let mut want = web;
    want["metadata"]["resourceVersion"] = json!("1");
    want["metadata"]["creationTimestamp"] = created.clone();
    assert_eq!(
        want,
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-0",
                "namespace": "default",
                "uid": "uid-web-0",
                "labels": {"app": "web"},
                "annotations": {"note": "x"},
                "resourceVersion": "1",
                "creationTimestamp": created,
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running"},
        })
    );
    assert_eq!(list["items"][0], want);
    assert_eq!(
        kube_get(&api, "/api/v1/namespaces/default/pods/web-0"),
        (200, want)
    );

    let cases: &[(&str, &[&str])] = &[
        (
            "/api/v1/namespaces/default/pods",
            &["default/db-0", "default/pending", "default/web-0"],
        ),
        (
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a%2Cmetadata.name%3Dproxy",
            &["kube-system/proxy"],
        ),
        (
            "/api/v1/pods?fieldSelector=spec.nodeName%3D",
            &["default/pending"],
        ),
        (
            "/api/v1/pods?fieldSelector=spec.nodeName!%3Dnode-a",
            &["default/db-0", "default/pending"],
        ),
        (
            "/api/v1/pods?fieldSelector=&labelSelector=",
            &[
                "default/db-0",
                "default/pending",
                "default/web-0",
                "kube-system/proxy",
            ],
        ),
        (
            "/api/v1/pods?labelSelector=app+in+%28web%2Cdb%29",
            &["default/db-0", "default/web-0"],
        ),
        (
            "/api/v1/pods?labelSelector=app%2Capp!%3Dweb",
            &["default/db-0", "kube-system/proxy"],
        ),
        ("/api/v1/pods?labelSelector=!app", &["default/pending"]),
        (
            "/api/v1/pods?labelSelector=app+notin+(web,px)",
            &["default/db-0", "default/pending"],
        ),
        (
            "/api/v1/namespaces/default/pods?labelSelector=app%3D%3Dweb&resourceVersion=0\
             &resourceVersionMatch=NotOlderThan",
            &["default/web-0"],
        ),
        ("/api/v1/namespaces/other/pods", &[]),
    ];
    for (path, want) in cases {
        let (code, list) = kube_get(&api, path);
        assert_eq!(code, 200, "{path}: {list}");
        assert_eq!(item_keys(&list), *want, "{path}");
        assert_eq!(list["metadata"], json!({"resourceVersion": "4"}), "{path}");
    }

    assert_eq!(
        kube_get(&api, "/api/v1/pods?fieldSelector=spec.hostname%3Dx"),
        (
            400,
            kube_status(
                400,
                "BadRequest",
                "field label not supported: spec.hostname",
                None
            )
        )
    );
    assert_eq!(
        kube_get(&api, "/api/v1/namespaces/default/pods/nope"),
        (
            404,
            kube_status(
                404,
                "NotFound",
                "pods \"nope\" not found",
                Some(json!({"name": "nope", "kind": "pods"}))
            )
        )
    );
    assert_eq!(
        kube_get(&api, "/api/v1/nodes"),
        (
            404,
            kube_status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                None
            )
        )
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 2 + cases.len() + 3);
    assert_eq!(requests[0], format!("GET {WATCHER_LIST}"));
    assert_eq!(requests[1], "GET /api/v1/namespaces/default/pods/web-0");
    assert_eq!(requests[requests.len() - 1], "GET /api/v1/nodes");
}

#[test]
fn kubeapi_pages_a_consistent_snapshot_with_limit_and_continue() {
    let api = FakeKubeApi::start();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let pod = FakeKubeApi::pod("default", name, name, "node-a", &[], &[]);
        assert_eq!(api.put_pod(pod), (i + 1).to_string());
    }
    let (code, page1) = kube_get(&api, "/api/v1/pods?&limit=1");
    assert_eq!(code, 200, "{page1}");
    assert_eq!(item_keys(&page1), ["default/a"]);
    let token1 = page1["metadata"]["continue"].as_str().unwrap().to_string();
    assert_eq!(
        page1["metadata"],
        json!({"resourceVersion": "3", "continue": token1, "remainingItemCount": 2})
    );
    // The API server's token: unpadded base64url.
    assert!(token1
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    // Changes between pages do not show: the whole list is at revision 3.
    api.delete_pod("default", "b");
    assert_eq!(
        api.put_pod(FakeKubeApi::pod("default", "d", "d", "node-a", &[], &[])),
        "5"
    );
    let (code, page2) = kube_get(&api, &format!("/api/v1/pods?&limit=1&continue={token1}"));
    assert_eq!(code, 200, "{page2}");
    assert_eq!(item_keys(&page2), ["default/b"]);
    assert_eq!(page2["items"][0]["metadata"]["resourceVersion"], "2");
    let token2 = page2["metadata"]["continue"].as_str().unwrap().to_string();
    assert_eq!(
        page2["metadata"],
        json!({"resourceVersion": "3", "continue": token2, "remainingItemCount": 1})
    );
    let (code, page3) = kube_get(&api, &format!("/api/v1/pods?&limit=500&continue={token2}"));
    assert_eq!(code, 200, "{page3}");
    assert_eq!(item_keys(&page3), ["default/c"]);
    assert_eq!(page3["metadata"], json!({"resourceVersion": "3"}));

    // With a selector the server cannot count what remains.
    let (_, sel) = kube_get(
        &api,
        "/api/v1/pods?&fieldSelector=spec.nodeName%3Dnode-a&limit=2",
    );
    assert_eq!(item_keys(&sel), ["default/a", "default/c"]);
    let token = sel["metadata"]["continue"].as_str().unwrap();
    assert_eq!(
        sel["metadata"],
        json!({"resourceVersion": "5", "continue": token})
    );

    // Once revision 3 is compacted, its tokens are 410 Expired.
    api.expire_history();
    assert_eq!(
        kube_get(&api, &format!("/api/v1/pods?&limit=1&continue={token2}")),
        (
            410,
            kube_status(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter, or use the \
                 continue token in this response to retrieve the remainder of the results. \
                 Continuing with the provided token results in an inconsistent list - objects \
                 that were created, modified, or deleted between the time the first chunk was \
                 returned and now may show up in the list.",
                None
            )
        )
    );
    let (code, fresh) = kube_get(&api, "/api/v1/pods?&limit=500");
    assert_eq!(code, 200);
    assert_eq!(item_keys(&fresh), ["default/a", "default/c", "default/d"]);
    assert_eq!(fresh["metadata"], json!({"resourceVersion": "6"}));
    assert_eq!(
        kube_get(&api, "/api/v1/pods?limit=1&continue=garbage")
            .1
            .get("reason"),
        Some(&json!("BadRequest"))
    );
}

#[test]
fn kubeapi_watch_from_the_list_revision_streams_changes_in_order() {
    let api = FakeKubeApi::start();
    let pod = |name: &str, node: &str, app: &str| {
        FakeKubeApi::pod(
            "default",
            name,
            &format!("uid-{name}"),
            node,
            &[("app", app)],
            &[],
        )
    };
    api.put_pod(pod("web-0", "node-a", "web"));
    api.put_pod(pod("other", "node-b", "web"));
    let (_, list) = kube_get(&api, WATCHER_LIST);
    assert_eq!(list["metadata"]["resourceVersion"], "2");

    let opened = Instant::now();
    let (code, headers, mut w) = WatchStream::open(&api, &watcher_watch("2"));
    assert_eq!(code, 200);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked")
    );

    assert_eq!(api.put_pod(pod("web-1", "node-a", "web")), "3");
    assert_eq!(api.put_pod(pod("web-0", "node-a", "web2")), "4");
    assert_eq!(api.put_pod(pod("other-2", "node-b", "web")), "5");
    api.delete_pod("default", "web-1");
    // Unscheduled, then bound to node-a: it enters the selection.
    assert_eq!(api.put_pod(pod("late", "", "web")), "7");
    assert_eq!(api.put_pod(pod("late", "node-a", "web")), "8");

    let first = w.next().unwrap();
    assert_eq!(summary(&first), sum("ADDED", "web-1", "3"));
    let mut want = pod("web-1", "node-a", "web");
    want["metadata"]["resourceVersion"] = json!("3");
    want["metadata"]["creationTimestamp"] =
        first["object"]["metadata"]["creationTimestamp"].clone();
    assert_recent(&want["metadata"]["creationTimestamp"]);
    assert_eq!(first, json!({"type": "ADDED", "object": want}));
    assert_eq!(summary(&w.next().unwrap()), sum("MODIFIED", "web-0", "4"));
    let deleted = w.next().unwrap();
    want["metadata"]["resourceVersion"] = json!("6");
    assert_eq!(deleted, json!({"type": "DELETED", "object": want}));
    assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "late", "8"));

    // Then, with nothing more to say, a bookmark at the current revision about once a second.
    assert_eq!(
        w.next().unwrap(),
        json!({
            "type": "BOOKMARK",
            "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "8"}},
        })
    );
    let took = opened.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
        "{took:?}"
    );
    assert_eq!(api.put_pod(pod("web-2", "node-a", "web")), "9");
    assert_eq!(
        summary(&w.next_change().unwrap()),
        sum("ADDED", "web-2", "9")
    );
    assert_eq!(
        api.requests(),
        vec![
            format!("GET {WATCHER_LIST}"),
            format!("GET {}", watcher_watch("2")),
        ]
    );
}

#[test]
fn kubeapi_watch_from_zero_starts_with_the_current_state() {
    let api = FakeKubeApi::start();
    for (name, app) in [("a", "web"), ("b", "db"), ("c", "web")] {
        api.put_pod(FakeKubeApi::pod(
            "default",
            name,
            name,
            "node-a",
            &[("app", app)],
            &[],
        ));
    }
    api.put_pod(FakeKubeApi::pod(
        "other",
        "d",
        "d",
        "node-a",
        &[("app", "web")],
        &[],
    ));
    for rv in ["", "&resourceVersion=0"] {
        let path = format!("/api/v1/namespaces/default/pods?watch=1&labelSelector=app%3Dweb{rv}");
        let (code, _, mut w) = WatchStream::open(&api, &path);
        assert_eq!(code, 200);
        assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "a", "1"));
        assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "c", "3"));
    }

    // Leaving the selection is a DELETED of the last state that matched, at the new revision;
    // entering it an ADDED. No bookmarks unless asked for; timeoutSeconds ends the stream.
    let opened = Instant::now();
    let (_, _, mut w) = WatchStream::open(
        &api,
        "/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dweb&timeoutSeconds=1",
    );
    assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "a", "1"));
    assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "c", "3"));
    let a_web = FakeKubeApi::pod("default", "a", "a", "node-a", &[("app", "web")], &[]);
    let mut a_db = a_web.clone();
    a_db["metadata"]["labels"]["app"] = json!("db");
    assert_eq!(api.put_pod(a_db), "5");
    assert_eq!(
        api.put_pod(FakeKubeApi::pod(
            "default",
            "b",
            "b",
            "node-a",
            &[("app", "web")],
            &[]
        )),
        "6"
    );
    let gone = w.next().unwrap();
    let mut want = a_web;
    want["metadata"]["resourceVersion"] = json!("5");
    want["metadata"]["creationTimestamp"] = gone["object"]["metadata"]["creationTimestamp"].clone();
    assert_eq!(gone, json!({"type": "DELETED", "object": want}));
    assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "b", "6"));
    assert_eq!(w.next(), None);
    let took = opened.elapsed();
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(3)).contains(&took),
        "{took:?}"
    );
}

#[test]
fn kubeapi_watch_from_a_compacted_revision_gets_410_in_stream() {
    let api = FakeKubeApi::start();
    let pod = |name: &str| FakeKubeApi::pod("default", name, name, "node-a", &[], &[]);
    api.put_pod(pod("a"));
    api.put_pod(pod("b"));
    let (_, _, mut w) = WatchStream::open(&api, &watcher_watch("2"));
    assert_eq!(api.put_pod(pod("c")), "3");
    assert_eq!(summary(&w.next_change().unwrap()), sum("ADDED", "c", "3"));
    // Then a BOOKMARK at the current revision, which kube-runtime resumes from; nothing is
    // written after it.
    assert_eq!(
        w.next().unwrap(),
        json!({
            "type": "BOOKMARK",
            "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "3"}},
        })
    );
    assert_eq!(api.resource_version(), "3");

    // Compaction makes a revision of its own (4), compacts everything before it and ends open
    // streams cleanly. Resuming from the bookmark's revision, on the same connection as kube-rs
    // does, is an in-stream 410; so is resuming from any older revision.
    api.expire_history();
    assert_eq!(w.next(), None);
    assert_eq!(api.resource_version(), "4");
    let expired = |rv: &str| {
        let msg = format!("too old resource version: {rv} (4)");
        json!({"type": "ERROR", "object": kube_status(410, "Expired", &msg, None)})
    };
    let (code, headers) = w.reopen(&watcher_watch("3"));
    assert_eq!(code, 200);
    assert_eq!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked")
    );
    assert_eq!(w.next(), Some(expired("3")));
    assert_eq!(w.next(), None);
    for rv in ["1", "2"] {
        let (code, _, mut w) = WatchStream::open(&api, &watcher_watch(rv));
        assert_eq!(code, 200);
        assert_eq!(w.next(), Some(expired(rv)));
        assert_eq!(w.next(), None);
    }

    // The relist is at the compaction's revision, and a watch from it works.
    let (code, list) = kube_get(&api, WATCHER_LIST);
    assert_eq!(code, 200, "{list}");
    assert_eq!(item_keys(&list), ["default/a", "default/b", "default/c"]);
    assert_eq!(list["metadata"], json!({"resourceVersion": "4"}));
    let (code, _, mut w) = WatchStream::open(&api, &watcher_watch("4"));
    assert_eq!(code, 200);
    assert_eq!(api.put_pod(pod("d")), "5");
    assert_eq!(summary(&w.next_change().unwrap()), sum("ADDED", "d", "5"));

    // Exact lists are served from the history, and are 410 (HTTP) before the compaction point.
    let (code, at4) = kube_get(
        &api,
        "/api/v1/pods?resourceVersion=4&resourceVersionMatch=Exact",
    );
    assert_eq!(code, 200);
    assert_eq!(item_keys(&at4), ["default/a", "default/b", "default/c"]);
    assert_eq!(at4["metadata"], json!({"resourceVersion": "4"}));
    assert_eq!(
        kube_get(
            &api,
            "/api/v1/pods?resourceVersion=3&resourceVersionMatch=Exact"
        ),
        (
            410,
            kube_status(410, "Expired", "too old resource version: 3 (4)", None)
        )
    );
    assert_eq!(
        kube_get(&api, "/api/v1/pods?watch=true&resourceVersion=x"),
        (
            400,
            kube_status(400, "BadRequest", "invalid resource version: \"x\"", None)
        )
    );
}

#[test]
fn kubeapi_leases_use_optimistic_concurrency() {
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    const JSON: Option<&str> = Some("application/json");
    let api = FakeKubeApi::start();
    let one = format!("{LEASES}/ringtail-node-a");
    let details =
        json!({"name": "ringtail-node-a", "group": "coordination.k8s.io", "kind": "leases"});
    let conflict = kube_status(
        409,
        "Conflict",
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"ringtail-node-a\": the \
         object has been modified; please apply your changes to the latest version and try again",
        Some(details.clone()),
    );
    assert_eq!(
        kube_get(&api, &one),
        (
            404,
            kube_status(
                404,
                "NotFound",
                "leases.coordination.k8s.io \"ringtail-node-a\" not found",
                Some(details.clone())
            )
        )
    );

    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "ringtail-node-a", "namespace": "kube-system"},
        "spec": {
            "holderIdentity": "node-a",
            "leaseDurationSeconds": 15,
            "acquireTime": "2024-01-01T00:00:00.000000Z",
            "renewTime": "2024-01-01T00:00:00.000000Z",
            "leaseTransitions": 0,
        },
    });
    let (code, created) = kube_send(&api, "POST", LEASES, JSON, &lease);
    assert_eq!(code, 201, "{created}");
    assert_recent(&created["metadata"]["creationTimestamp"]);
    let mut want = lease.clone();
    want["metadata"]["resourceVersion"] = json!("1");
    want["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000001");
    want["metadata"]["creationTimestamp"] = created["metadata"]["creationTimestamp"].clone();
    assert_eq!(created, want);
    assert_eq!(
        api.lease("kube-system", "ringtail-node-a"),
        Some(want.clone())
    );
    assert_eq!(kube_get(&api, &one), (200, want.clone()));
    assert_eq!(
        kube_send(&api, "POST", LEASES, JSON, &lease),
        (
            409,
            kube_status(
                409,
                "AlreadyExists",
                "leases.coordination.k8s.io \"ringtail-node-a\" already exists",
                Some(details.clone())
            )
        )
    );

    // Another holder takes it (revision 2): a renewal from revision 1 conflicts, and so does
    // one without a revision (leases allow no unconditional update).
    let mut theirs = want.clone();
    theirs["spec"]["holderIdentity"] = json!("node-b");
    let (code, taken) = kube_send(&api, "PUT", &one, JSON, &theirs);
    assert_eq!(code, 200, "{taken}");
    theirs["metadata"]["resourceVersion"] = json!("2");
    assert_eq!(taken, theirs);
    let mut renew = want.clone();
    renew["spec"]["renewTime"] = json!("2024-01-01T00:00:05.000000Z");
    assert_eq!(
        kube_send(&api, "PUT", &one, JSON, &renew),
        (409, conflict.clone())
    );
    renew["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    assert_eq!(kube_send(&api, "PUT", &one, JSON, &renew), (409, conflict));
    renew["metadata"]["resourceVersion"] = json!("2");
    let (code, renewed) = kube_send(&api, "PUT", &one, JSON, &renew);
    assert_eq!(code, 200, "{renewed}");
    let mut want = renew.clone();
    want["metadata"]["resourceVersion"] = json!("3");
    assert_eq!(renewed, want);
    // Writing the same again changes nothing, so no new revision.
    renew["metadata"]["resourceVersion"] = json!("3");
    assert_eq!(kube_send(&api, "PUT", &one, JSON, &renew), (200, want));

    // PUT creates an absent lease (the lease strategy allows create on update).
    let mut other = lease.clone();
    other["metadata"]["name"] = json!("other");
    let (code, made) = kube_send(&api, "PUT", &format!("{LEASES}/other"), JSON, &other);
    assert_eq!(code, 201, "{made}");
    assert_eq!(made["metadata"]["resourceVersion"], "4");
    assert_eq!(
        made["metadata"]["uid"],
        "00000000-0000-4000-8000-000000000002"
    );
    // A name that differs from the URL's, or none at all.
    assert_eq!(
        kube_send(&api, "PUT", &format!("{LEASES}/third"), JSON, &other),
        (
            400,
            kube_status(
                400,
                "BadRequest",
                "the name of the object (other) does not match the name on the URL (third)",
                None
            )
        )
    );
    let nameless = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {}});
    assert_eq!(
        kube_send(&api, "POST", LEASES, JSON, &nameless),
        (
            422,
            kube_status(
                422,
                "Invalid",
                "Lease.coordination.k8s.io \"\" is invalid: metadata.name: Required value: name \
                 or generateName is required",
                Some(json!({
                    "kind": "Lease",
                    "group": "coordination.k8s.io",
                    "causes": [{
                        "reason": "FieldValueRequired",
                        "message": "Required value: name or generateName is required",
                        "field": "metadata.name",
                    }],
                }))
            )
        )
    );
    // PATCH and DELETE are not served.
    let not_allowed = kube_status(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        None,
    );
    assert_eq!(
        kube_send(
            &api,
            "PATCH",
            &one,
            Some("application/merge-patch+json"),
            &json!({"spec": {"holderIdentity": "node-c"}})
        ),
        (405, not_allowed.clone())
    );
    assert_eq!(
        kube_send(&api, "DELETE", &one, None, &Value::Null),
        (405, not_allowed)
    );
    assert_eq!(api.resource_version(), "4");
    let requests = api.requests();
    assert_eq!(requests.len(), 14);
    assert_eq!(
        requests[..3],
        [
            format!("GET {one}"),
            format!("POST {LEASES}"),
            format!("GET {one}")
        ]
    );
}

#[test]
fn kubeapi_set_down_answers_503_and_ends_watches() {
    let api = FakeKubeApi::start();
    api.put_pod(FakeKubeApi::pod("default", "a", "a", "node-a", &[], &[]));
    let (_, _, mut w) = WatchStream::open(&api, "/api/v1/pods?watch=true");
    // The initial ADDED: the stream is being served.
    assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "a", "1"));
    api.set_down(true);
    assert_eq!(w.next(), None);
    assert!(w.closed_by_peer());
    let unavailable = kube_status(
        503,
        "ServiceUnavailable",
        "the server is currently unable to handle the request",
        None,
    );
    assert_eq!(kube_get(&api, "/api/v1/pods"), (503, unavailable.clone()));
    assert_eq!(
        kube_get(&api, "/apis/coordination.k8s.io/v1/namespaces/x/leases/y"),
        (503, unavailable)
    );
    // The cluster goes on meanwhile.
    assert_eq!(
        api.put_pod(FakeKubeApi::pod("default", "b", "b", "node-a", &[], &[])),
        "2"
    );
    api.set_down(false);
    let (code, list) = kube_get(&api, "/api/v1/pods");
    assert_eq!(code, 200);
    assert_eq!(list["metadata"], json!({"resourceVersion": "2"}));
    assert_eq!(
        api.requests(),
        [
            "GET /api/v1/pods?watch=true",
            "GET /api/v1/pods",
            "GET /apis/coordination.k8s.io/v1/namespaces/x/leases/y",
            "GET /api/v1/pods",
        ]
    );
}

#[test]
fn kubeapi_events_have_the_core_v1_shape() {
    let api = FakeKubeApi::start();
    api.put_pod(FakeKubeApi::pod(
        "default",
        "web-0",
        "uid-web-0",
        "node-a",
        &[],
        &[],
    ));
    let ev = FakeKubeApi::event(
        "default",
        "web-0.17a2b3c4d5e6f708",
        ("Pod", "web-0", "default"),
        "Pulled",
        "Successfully pulled image \"x\"",
        "Normal",
    );
    let now = ev["firstTimestamp"].clone();
    assert_recent(&now);
    let mut want = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web-0.17a2b3c4d5e6f708", "namespace": "default"},
        "involvedObject": {
            "kind": "Pod",
            "namespace": "default",
            "name": "web-0",
            "apiVersion": "v1",
        },
        "reason": "Pulled",
        "message": "Successfully pulled image \"x\"",
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": "Normal",
        "eventTime": null,
        "reportingComponent": "kubelet",
        "reportingInstance": "node-a",
    });
    assert_eq!(ev, want);
    assert_eq!(api.put_event(ev), "2");

    // Stored with the pod's uid and revision filled in, as kubelet records them.
    want["involvedObject"]["uid"] = json!("uid-web-0");
    want["involvedObject"]["resourceVersion"] = json!("1");
    want["metadata"]["resourceVersion"] = json!("2");
    want["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000001");
    let (code, list) = kube_get(&api, "/api/v1/namespaces/default/events?limit=500");
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["metadata"], json!({"resourceVersion": "2"}));
    want["metadata"]["creationTimestamp"] =
        list["items"][0]["metadata"]["creationTimestamp"].clone();
    assert_eq!(list["items"], json!([want]));
    assert_eq!(api.event_object("default", "web-0.17a2b3c4d5e6f708"), want);
    // Only what is missing is filled in.
    let mut other = FakeKubeApi::event(
        "default",
        "web-0.2",
        ("Pod", "web-0", "default"),
        "Killing",
        "Stopping container c",
        "Normal",
    );
    other["involvedObject"]["resourceVersion"] = json!("700");
    assert_eq!(api.put_event(other), "3");
    let stored = api.event_object("default", "web-0.2");
    assert_eq!(
        stored["involvedObject"],
        json!({
            "kind": "Pod",
            "namespace": "default",
            "name": "web-0",
            "uid": "uid-web-0",
            "apiVersion": "v1",
            "resourceVersion": "700",
        })
    );
    let both: &[&str] = &["default/web-0.17a2b3c4d5e6f708", "default/web-0.2"];
    for (selector, want) in [
        (
            "involvedObject.kind%3DPod%2CinvolvedObject.name%3Dweb-0",
            both,
        ),
        ("involvedObject.name%3Dweb-1", &[]),
        ("source%3Dkubelet%2Ctype%3DNormal", both),
        ("reason%3DKilling", &["default/web-0.2"]),
        ("type%3DWarning", &[]),
    ] {
        let (code, list) = kube_get(&api, &format!("/api/v1/events?fieldSelector={selector}"));
        assert_eq!(code, 200, "{list}");
        assert_eq!(item_keys(&list), want, "{selector}");
        assert_eq!(list["metadata"], json!({"resourceVersion": "3"}));
    }

    let (_, _, mut w) = WatchStream::open(&api, "/api/v1/events?watch=true&resourceVersion=0");
    assert_eq!(w.next(), Some(json!({"type": "ADDED", "object": want})));
    assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "web-0.2", "3"));
    let warning = FakeKubeApi::event(
        "default",
        "web-0.3",
        ("Pod", "web-0", "default"),
        "BackOff",
        "Back-off restarting failed container c",
        "Warning",
    );
    assert_eq!(api.put_event(warning), "4");
    assert_eq!(summary(&w.next().unwrap()), sum("ADDED", "web-0.3", "4"));

    // Streaming lists are refused, as without the WatchList feature gate.
    let msg = "sendInitialEvents is forbidden for watch unless the WatchList feature gate is \
               enabled";
    assert_eq!(
        kube_get(
            &api,
            "/api/v1/events?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true\
             &sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
        ),
        (
            422,
            kube_status(
                422,
                "Invalid",
                &format!(
                    "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: {msg}"
                ),
                Some(json!({
                    "group": "meta.k8s.io",
                    "kind": "ListOptions",
                    "causes": [{
                        "reason": "FieldValueForbidden",
                        "message": format!("Forbidden: {msg}"),
                        "field": "sendInitialEvents",
                    }],
                }))
            )
        )
    );
}

#[test]
fn kubeapi_writes_a_kubeconfig_for_the_fake() {
    let api = FakeKubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path);
    let config: Value = serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        config,
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "fake", "cluster": {"server": api.url()}}],
            "users": [{"name": "fake", "user": {"token": "test-token"}}],
            "contexts": [{
                "name": "fake",
                "context": {"cluster": "fake", "user": "fake", "namespace": "default"},
            }],
            "current-context": "fake",
        })
    );
}
