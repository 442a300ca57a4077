//! Tests of the test-support code itself (no ringtail process needed).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use prost::Message;
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
