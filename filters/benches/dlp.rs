//! DLP scan throughput with the full default packs (`secrets` + `pii`).
//!
//! - `clean/*`: prose, digit-heavy technical text, and source code (this crate's), with no
//!   finding (the common case);
//! - `dense/*`: text with a finding every ~80 bytes;
//! - `prompt_4k/*`: a 4 KiB clean prompt (prose; technical) as text, and the technical one as
//!   a chat request through the filter (`on_request`: JSON walk, scan, findings);
//! - `stream_4k/*`: a 4 KiB answer streamed in 4-byte deltas (SSE events, JSON included).
//!
//! Run: `cargo bench -p sluice-filters --bench dlp`. Goals (2-core machine): ≥ 1 GB/s clean,
//! ≥ 200 MB/s dense, ≤ 10 µs per clean 4 KiB prompt.

use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, Method};
use serde_json::{json, Value};
use sluice_filters::dlp::{Action, DlpFilter, DlpSettings, Scanner};
use sluice_filters::{Cx, Filter, JsonBody, Request, Shared, StreamEvent};

const WORDS: &[&str] = &[
    "the",
    "request",
    "gateway",
    "model",
    "returns",
    "a",
    "response",
    "with",
    "tokens",
    "and",
    "latency",
    "of",
    "deployment",
    "cluster",
    "should",
    "be",
    "configured",
    "for",
    "each",
    "team",
    "when",
    "upstream",
    "errors",
    "retry",
    "policy",
    "is",
    "applied",
    "to",
    "streaming",
    "answers",
    "security",
    "review",
    "found",
    "that",
    "our",
    "service",
    "uses",
    "TLS",
    "everywhere",
    "but",
    "logs",
    "include",
    "timestamps",
    "in",
    "UTC",
    "Kubernetes",
    "pods",
    "restart",
    "after",
    "memory",
    "pressure",
    "so",
    "we",
    "raised",
    "limits",
    "The",
    "migration",
    "plan",
    "covers",
];

const TECH: &[&str] = &[
    "v1.29.2",
    "550e8400-e29b-41d4-a716-446655440000",
    "2024-11-28T14:32:05Z",
    "$1,299.99",
    "9a8d13d7dc8b46be18ae1a589c7571e16abb7460",
    "fn main() { println!(\"{}\", x + 1); }",
    "status=200",
    "latency_ms=183",
    "port 8080",
    "12%",
    "3 replicas",
    "1,048,576 bytes",
    "kubectl get pods -n prod",
    "SELECT id FROM users LIMIT 100;",
    "task-based",
    "risk-free",
];

/// Deterministic prose: sentences of ordinary words.
fn prose_text(len: usize) -> String {
    text(len, false)
}

/// Deterministic technical text: prose with a version, UUID, timestamp, price, hash, code
/// snippet or log field every ~9 words (digit-heavy: the hard case for the PII triggers).
fn clean_text(len: usize) -> String {
    text(len, true)
}

fn text(len: usize, technical: bool) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut s = String::with_capacity(len + 64);
    while s.len() < len {
        let words = 6 + next(12);
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            if technical && next(9) == 0 {
                s.push_str(TECH[next(TECH.len())]);
            } else {
                s.push_str(WORDS[next(WORDS.len())]);
            }
        }
        s.push_str(if next(4) == 0 { ".\n" } else { ". " });
    }
    s.truncate(len);
    s
}

const FINDINGS: &[&str] = &[
    "john.doe@example.com",
    "4111 1111 1111 1111",
    "AKIAIOSFODNN7EXAMPLE",
    "+1 (415) 555-2671",
    "81.2.69.142",
    "536-22-1234",
    "DE89 3704 0044 0532 0130 00",
    "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",
];

/// Text with a finding every ~80 bytes.
fn dense_text(len: usize) -> String {
    let filler = clean_text(len);
    let mut s = String::with_capacity(len + 64);
    for (i, chunk) in filler.as_bytes().chunks(55).enumerate() {
        s.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        s.push(' ');
        s.push_str(FINDINGS[i % FINDINGS.len()]);
        s.push(' ');
        if s.len() >= len {
            break;
        }
    }
    s
}

fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Real source code: this crate's own non-DLP sources (Rust, comments, tests, string
/// literals), repeated to `len` bytes.
fn code_text(len: usize) -> String {
    const FILES: &[&str] = &[
        include_str!("../src/audit/filter.rs"),
        include_str!("../src/audit/record.rs"),
        include_str!("../src/audit/sink.rs"),
        include_str!("../src/audit/verify.rs"),
        include_str!("../src/audit/writer.rs"),
        include_str!("../src/body.rs"),
        include_str!("../src/context.rs"),
        include_str!("../src/filter.rs"),
        include_str!("../src/identity.rs"),
        include_str!("../src/policy.rs"),
        include_str!("../src/reply.rs"),
        include_str!("../src/strict_json.rs"),
    ];
    let mut s = String::with_capacity(len + 64 * 1024);
    while s.len() < len {
        for f in FILES {
            s.push_str(f);
        }
    }
    s.truncate(s.floor_char_boundary(len));
    s
}

fn bench(c: &mut Criterion) {
    let sc = Scanner::from_settings(&DlpSettings::default()).expect("default packs build");
    let prose = prose_text(1 << 20);
    let clean = clean_text(1 << 20);
    let dense = dense_text(1 << 20);
    let code = code_text(1 << 20);
    assert!(
        sc.find_all(prose.as_bytes()).is_empty(),
        "the prose is clean"
    );
    assert!(
        sc.find_all(clean.as_bytes()).is_empty(),
        "the clean text is clean"
    );
    let in_code = sc.find_all(code.as_bytes());
    assert!(in_code.is_empty(), "the code is clean: {in_code:?}");
    let n_dense = sc.find_all(dense.as_bytes()).len();
    assert!(n_dense > 10_000, "the dense text is dense ({n_dense})");

    let mut g = c.benchmark_group("clean");
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("prose_1MiB", |b| {
        b.iter(|| sc.find_all(black_box(prose.as_bytes())))
    });
    g.bench_function("technical_1MiB", |b| {
        b.iter(|| sc.find_all(black_box(clean.as_bytes())))
    });
    g.bench_function("code_1MiB", |b| {
        b.iter(|| sc.find_all(black_box(code.as_bytes())))
    });
    g.finish();

    let mut g = c.benchmark_group("dense");
    g.throughput(Throughput::Bytes(dense.len() as u64));
    g.bench_function("find_1MiB", |b| {
        b.iter(|| sc.find_all(black_box(dense.as_bytes())))
    });
    g.bench_function("redact_1MiB", |b| {
        b.iter(|| sc.apply(black_box(&dense), Action::Redact))
    });
    g.finish();

    let prompt = clean_text(4096);
    let prose_prompt = prose_text(4096);
    let f = DlpFilter::new(
        &DlpSettings::default(),
        &Shared::new(prometheus::Registry::new()),
    )
    .expect("filter builds");
    let req = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 512,
    });
    let raw = Bytes::from(req.to_string());
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("prompt_4k");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("find_prose", |b| {
        b.iter(|| sc.find_all(black_box(prose_prompt.as_bytes())))
    });
    g.bench_function("find_technical", |b| {
        b.iter(|| sc.find_all(black_box(prompt.as_bytes())))
    });
    g.bench_function("on_request_json", |b| {
        b.iter_batched(
            || JsonBody::parsed(raw.clone(), req.clone()),
            |mut body| {
                let mut cx = Cx::new("r".into(), Method::POST, "/v1/chat/completions".into());
                let mut r = Request {
                    method: &Method::POST,
                    path: "/v1/chat/completions",
                    headers: &headers,
                    body: &mut body,
                };
                black_box(ready(f.on_request(&mut r, &mut cx)));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    // Whole answers: a chat completion of prose with line breaks (escaped in its JSON) and an
    // embedding of 1,536 floats.
    let chat = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1764300000, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": prose_text(2048).replace(". ", ".\n")}}],
        "usage": {"prompt_tokens": 512, "completion_tokens": 480, "total_tokens": 992}
    });
    let vector: Vec<f64> = (0..1536)
        .map(|i| ((i * 7919) % 2001) as f64 / 1000.0 - 1.0)
        .collect();
    let embedding = json!({
        "object": "list", "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "usage": {"prompt_tokens": 8, "total_tokens": 8}
    });
    let mut g = c.benchmark_group("answer");
    for (name, doc, api) in [
        (
            "chat_2k",
            &chat,
            &sluice_filters::api::CHAT as &'static dyn sluice_filters::api::Api,
        ),
        (
            "embedding_1536",
            &embedding,
            &sluice_filters::api::EMBEDDINGS,
        ),
    ] {
        let raw = Bytes::from(doc.to_string());
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || JsonBody::parsed(raw.clone(), doc.clone()),
                |mut body| {
                    let mut cx = Cx::new("r".into(), Method::POST, "/v1/x".into());
                    cx.api = api;
                    f.on_response_body(&mut body, &mut cx);
                    black_box(body.is_changed());
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // A 4 KiB answer as 4-byte deltas, one SSE event each, one read per event.
    let answer = clean_text(4096);
    let events: Vec<StreamEvent> = answer
        .as_bytes()
        .chunks(4)
        .map(|p| {
            let v: Value = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
                "model": "m", "choices": [{"index": 0, "delta": {"content": String::from_utf8_lossy(p)}, "finish_reason": null}]});
            let raw = format!("data: {v}\n\n");
            StreamEvent::received(Bytes::from(raw), Some(v.to_string().as_bytes()))
        })
        .collect();
    let mut g = c.benchmark_group("stream_4k");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("4_byte_deltas", |b| {
        b.iter_batched(
            || events.clone(),
            |evs| {
                let mut cx = Cx::new("r".into(), Method::POST, "/v1/chat/completions".into());
                for e in evs {
                    let mut batch = vec![e];
                    f.on_stream_events(&mut batch, false, &mut cx);
                    black_box(batch.iter().map(|e| e.to_bytes().len()).sum::<usize>());
                }
                let mut end = Vec::new();
                f.on_stream_events(&mut end, true, &mut cx);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
