//! Micro-benchmarks of the per-line hot path and of the writer's encoding, each with
//! `Throughput::Bytes` so criterion prints MiB/s.
//!
//! Run: `cargo bench --bench micro -- --warm-up-time 1 --measurement-time 3`
//! (one group: `cargo bench --bench micro -- trace`).
//!
//! Inputs come from `common/gen.rs` (the same generator as the end-to-end bench) and are built
//! before timing; the timed closures only run the code under test.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use bumpalo::Bump;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use ringtail::config::JsonLine;
use ringtail::entry::{Chunk, FileKey, Fingerprint};
use ringtail::process::json::JsonScanner;
use ringtail::process::level::{self, LevelBuf};
use ringtail::process::trace::TraceScanner;
use ringtail::process::Processor;
use ringtail::sink::encode::Encoder;
use ringtail::sources::files::cri;
use ringtail::sources::files::tail::Tail;

#[path = "common/gen.rs"]
mod gen;

use gen::{Gen, Kind};

const START_NS: i64 = 1_732_528_800_000_000_000;
/// The tailer's read size (`schedule::READ_SIZE`).
const BLOCK: usize = 128 << 10;
/// Loki's default `max_line_size`.
const MAX_LINE: usize = 256 << 10;

fn lines_of(block: &[u8]) -> Vec<&[u8]> {
    block
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fn total(lines: &[impl AsRef<[u8]>]) -> u64 {
    lines.iter().map(|l| l.as_ref().len() as u64).sum()
}

fn cri_parse(c: &mut Criterion) {
    let block = Gen::new(1, START_NS, 0).cri_block(1 << 20);
    let lines = lines_of(&block);
    let mut g = c.benchmark_group("cri");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("parse_1MiB_mixed", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(cri::parse(black_box(l)));
            }
        })
    });
    g.finish();
}

fn level_extraction(c: &mut Criterion) {
    let lines = Gen::new(2, START_NS, 0).contents(Kind::Json, 1000);
    let mut g = c.benchmark_group("level");
    g.throughput(Throughput::Bytes(total(&lines)));
    g.bench_function("json_scan_zap_1000_lines", |b| {
        let mut scanner = JsonScanner::default();
        let mut arena = Bump::with_capacity(64 << 10);
        b.iter(|| {
            arena.reset();
            for l in &lines {
                black_box(scanner.scan(&arena, black_box(l)));
            }
        })
    });

    let levels: Vec<&[u8]> = [
        "info", "INFO", "debug", "Warning", "warn", "error", "ERR", "fatal", "dpanic", " info ",
        "trace", "notice",
    ]
    .iter()
    .map(|s| s.as_bytes())
    .collect();
    g.throughput(Throughput::Bytes(total(&levels)));
    g.bench_function("normalize_12_values", |b| {
        let mut buf = LevelBuf::default();
        b.iter(|| {
            for l in &levels {
                black_box(level::normalize(black_box(l), &mut buf));
            }
        })
    });
    g.finish();
}

fn trace_extraction(c: &mut Criterion) {
    let mut gen = Gen::new(3, START_NS, 0);
    let istio = gen.contents(Kind::Istio, 1000);
    let mut plain = gen.contents(Kind::Klog, 500);
    plain.extend(gen.contents(Kind::Plain, 500));
    let scanner = TraceScanner::default();
    assert!(istio.iter().all(|l| scanner.find(l).is_some()));
    assert!(plain.iter().all(|l| scanner.find(l).is_none()));

    let mut g = c.benchmark_group("trace");
    g.throughput(Throughput::Bytes(total(&istio)));
    g.bench_function("find_istio_traceparent_1000_lines", |b| {
        b.iter(|| {
            for l in &istio {
                black_box(scanner.find(black_box(l)));
            }
        })
    });
    g.throughput(Throughput::Bytes(total(&plain)));
    g.bench_function("find_no_match_klog_plain_1000_lines", |b| {
        b.iter(|| {
            for l in &plain {
                black_box(scanner.find(black_box(l)));
            }
        })
    });
    g.finish();
}

fn new_tail(i: usize) -> Tail {
    Tail::new(
        FileKey {
            dev: 1,
            ino: i as u64,
        },
        Arc::from(Path::new("/var/log/pods/ns_pod_uid/c/0.log")),
        gen::labels(i),
        ringtail::sources::files::Format::Cri,
        Fingerprint::default(),
        0,
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    )
}

fn tail_consume(c: &mut Criterion) {
    let block = Gen::new(4, START_NS, 0).cri_block(BLOCK);
    let mut g = c.benchmark_group("tail");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("consume_128KiB_mixed_cri", |b| {
        let mut tail = new_tail(0);
        let mut proc = Processor::new(JsonLine::Raw, MAX_LINE);
        let mut chunk = Chunk::new(tail.labels.clone());
        b.iter(|| {
            chunk.reset(tail.labels.clone());
            tail.consume(black_box(&block), false, &mut proc, &mut chunk);
            proc.end_chunk();
            black_box(chunk.entries.len());
        })
    });
    // RKE2's daemon logs: klog (kubelet) and logrus (containerd) lines, half each.
    let mut plain = Vec::with_capacity(BLOCK);
    let mut i = 0u64;
    while plain.len() + 200 < BLOCK {
        let line = if i.is_multiple_of(2) {
            format!("I1125 10:00:{:02}.{:06}    1234 pod_workers.go:1298] \"Error syncing pod, skipping\" pod=\"ns/web-{i}\" err=\"back-off\"\n", i % 60, i % 1_000_000)
        } else {
            format!("time=\"2026-11-25T10:00:{:02}.{:09}Z\" level=info msg=\"shim disconnected\" id={i:016x} namespace=k8s.io\n", i % 60, i)
        };
        plain.extend_from_slice(line.as_bytes());
        i += 1;
    }
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function("consume_128KiB_rke2_plain", |b| {
        let mut tail = new_tail(1);
        tail.format = ringtail::sources::files::Format::Plain;
        let mut proc = Processor::new(JsonLine::Raw, MAX_LINE);
        let mut chunk = Chunk::new(tail.labels.clone());
        b.iter(|| {
            chunk.reset(tail.labels.clone());
            tail.consume(black_box(&plain), false, &mut proc, &mut chunk);
            proc.end_chunk();
            black_box(chunk.entries.len());
        })
    });
    g.finish();
}

/// About 1 MiB of entries (the default `loki.batch.max_bytes`) in 128 KiB chunks of 8 streams,
/// built by `Tail::consume` as the tailers build them.
fn batch() -> Vec<Chunk> {
    let mut gen = Gen::new(5, START_NS, 0);
    let mut proc = Processor::new(JsonLine::Raw, MAX_LINE);
    let mut chunks = Vec::new();
    let mut bytes = 0;
    for i in 0.. {
        if bytes >= 1 << 20 {
            break;
        }
        let block = gen.cri_block(BLOCK);
        let mut tail = new_tail(i % 8);
        let mut chunk = Chunk::new(tail.labels.clone());
        tail.consume(&block, false, &mut proc, &mut chunk);
        proc.end_chunk();
        bytes += chunk.size();
        chunks.push(chunk);
    }
    chunks
}

fn loki_encoding(c: &mut Criterion) {
    let chunks = batch();
    let data: u64 = chunks.iter().map(|c| c.size() as u64).sum();
    let mut encoded = Vec::new();
    Encoder::default().encode(&chunks, &mut encoded);
    let mut compressed = vec![0u8; snap::raw::max_compress_len(encoded.len())];

    let mut g = c.benchmark_group("loki");
    g.throughput(Throughput::Bytes(data));
    g.bench_function("encode_1MiB_batch", |b| {
        let mut enc = Encoder::default();
        let mut out = Vec::with_capacity(encoded.len());
        b.iter(|| {
            enc.encode(black_box(&chunks), &mut out);
            black_box(out.len());
        })
    });
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("snappy_compress_encoded_batch", |b| {
        let mut snappy = snap::raw::Encoder::new();
        b.iter(|| {
            black_box(
                snappy
                    .compress(black_box(&encoded), &mut compressed)
                    .unwrap(),
            )
        })
    });
    g.throughput(Throughput::Bytes(data));
    g.bench_function("encode_and_snappy_1MiB_batch", |b| {
        let mut enc = Encoder::default();
        let mut snappy = snap::raw::Encoder::new();
        let mut out = Vec::with_capacity(encoded.len());
        b.iter(|| {
            enc.encode(black_box(&chunks), &mut out);
            black_box(snappy.compress(&out, &mut compressed).unwrap())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    cri_parse,
    level_extraction,
    trace_extraction,
    tail_consume,
    loki_encoding
);
criterion_main!(benches);
