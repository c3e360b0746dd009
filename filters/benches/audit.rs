//! Records per second through the audit writer (chaining, SHA-256, writing, syncing), per fsync
//! mode, on the machine's temp directory.
//!
//! - `seal`: the chain step alone (SHA-256 over one record), the writer thread's serial work.
//! - `writer/<mode>/pipeline`: one producer queues 10 000 records as fast as it can, then
//!   flushes: the writer's throughput when batches are large.
//! - `writer/always/clients-<n>`: `n` threads each queue a record and wait for its fsync before
//!   the next, as requests under `fsync = "always"` do; group commit shares each fsync among the
//!   records that arrived meanwhile.
//!
//! `cargo bench -p sluice-filters --bench audit`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_filters::audit::{
    seal, AuditMetrics, AuditRecord, AuditWriter, Fsync, RecordDlp, RecordUsage, WriterOptions,
    GENESIS_PREV,
};

const WAIT: Duration = Duration::from_secs(60);

fn body(i: u64) -> Vec<u8> {
    AuditRecord {
        ts: "2025-06-01T12:00:00.123Z".into(),
        request_id: format!("8f2c1d9e-4b7a-4e1f-9a3c-{i:012}"),
        key_id: Some("alice-laptop".into()),
        user: Some("alice".into()),
        org: Some("acme".into()),
        role: Some("analyst".into()),
        client_ip: Some("203.0.113.7".into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some("gpt-4o-mini".into()),
        stream: true,
        status: Some(200),
        outcome: "ok".into(),
        latency_ms: 812,
        upstream_ms: Some(790),
        usage: Some(RecordUsage {
            prompt_tokens: 1200,
            completion_tokens: 340,
        }),
        dlp: vec![RecordDlp {
            detector: "email".into(),
            direction: "response".into(),
            action: "redact".into(),
            count: 2,
        }],
        user_agent: Some("OpenAI/Python 1.54.0".into()),
        ..AuditRecord::default()
    }
    .to_body()
    .unwrap_or_default()
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("sluice-audit-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn writer(dir: &Scratch, fsync: Fsync) -> AuditWriter {
    AuditWriter::start(
        WriterOptions {
            path: dir.0.join("audit.jsonl").to_string_lossy().into_owned(),
            fsync,
            fsync_interval: Duration::from_millis(100),
            max_file_bytes: Some(256 << 20),
            queue_capacity: 8192,
        },
        AuditMetrics::detached().expect("metrics"),
    )
    .expect("writer")
}

fn bench_seal(c: &mut Criterion) {
    let b = body(1);
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_record", |bench| {
        let mut out = Vec::with_capacity(1024);
        bench.iter(|| {
            out.clear();
            seal(&b, GENESIS_PREV, &mut out).expect("seal")
        })
    });
    g.finish();
}

fn bench_pipeline(c: &mut Criterion) {
    const N: u64 = 10_000;
    let bodies: Vec<Vec<u8>> = (0..N).map(body).collect();
    let mut g = c.benchmark_group("writer");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(N));
    for (name, fsync) in [
        ("never", Fsync::Never),
        ("interval", Fsync::Interval),
        ("always", Fsync::Always),
    ] {
        let dir = Scratch::new(name);
        let w = writer(&dir, fsync);
        g.bench_function(BenchmarkId::new(name, "pipeline"), |bench| {
            bench.iter(|| {
                for b in &bodies {
                    w.submit_blocking(b.clone(), WAIT).expect("queued");
                }
                w.flush(WAIT).expect("flushed");
            })
        });
        w.shutdown(WAIT);
    }
    g.finish();
}

fn bench_clients(c: &mut Criterion) {
    const PER_CLIENT: u64 = 50;
    let mut g = c.benchmark_group("writer");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for clients in [1u64, 16, 64] {
        let dir = Scratch::new(&format!("clients-{clients}"));
        let w = Arc::new(writer(&dir, Fsync::Always));
        let b = body(7);
        g.throughput(Throughput::Elements(clients * PER_CLIENT));
        g.bench_function(
            BenchmarkId::new("always", format!("clients-{clients}")),
            |bench| {
                bench.iter(|| {
                    let threads: Vec<_> = (0..clients)
                        .map(|_| {
                            let (w, b) = (w.clone(), b.clone());
                            std::thread::spawn(move || {
                                for _ in 0..PER_CLIENT {
                                    let seq = w.submit_blocking(b.clone(), WAIT).expect("queued");
                                    w.wait_durable(seq, WAIT).expect("durable");
                                }
                            })
                        })
                        .collect();
                    for t in threads {
                        t.join().expect("client");
                    }
                })
            },
        );
        w.shutdown(WAIT);
    }
    g.finish();
}

criterion_group!(benches, bench_seal, bench_pipeline, bench_clients);
criterion_main!(benches);
