//! The cost of one rate-limit admission check: the `rate_limit` filter's `on_request` for a chat
//! completion whose caller has request and token buckets at all three levels (org, user, key).
//! That is the whole per-request work: token estimate, plan, atomic check-and-charge of six
//! buckets, `x-ratelimit-*` headers.
//!
//! - `ratelimit/check/local`: the in-process store.
//! - `ratelimit/check/redis`: one script round trip to a `redis-server` on loopback, started by
//!   this bench (skipped with a notice when `redis-server` is not installed).
//!
//! Limits are far beyond what the bench can consume, so every check admits.
//!
//! `cargo bench -p sluice-filters --bench ratelimit`

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::json;
use sluice_filters::audit::AuditSettings;
use sluice_filters::dlp::DlpSettings;
use sluice_filters::policy::{KeyConfig, OrgConfig, UserConfig};
use sluice_filters::ratelimit::{self, RateLimitSettings};
use sluice_filters::{
    Cx, Filter, Grants, Identity, JsonBody, Policy, Request, Route, Sections, Shared, Verdict,
};

/// The governed routes these tests call.
const CHAT: Route = Route::Api(&sluice_filters::api::chat::ROUTE);

#[derive(Deserialize)]
struct BenchConfig {
    orgs: Vec<OrgConfig>,
    users: Vec<UserConfig>,
    keys: Vec<KeyConfig>,
    rate_limit: RateLimitSettings,
}

const LIMITS: &str =
    "rate_limit = { requests_per_minute = 1000000000000, tokens_per_minute = 1000000000000000 }";

fn filter(settings: &str) -> Arc<dyn Filter> {
    let text = format!(
        "[[orgs]]\nname = \"acme\"\n{LIMITS}\n\
         [[users]]\nname = \"alice\"\norg = \"acme\"\nrole = \"r\"\n{LIMITS}\n\
         [[keys]]\nid = \"a1\"\nuser = \"alice\"\nsha256 = \"{:064x}\"\n{LIMITS}\n\
         [rate_limit]\n{settings}\n",
        1
    );
    let cfg: BenchConfig = toml::from_str(&text).expect("bench config");
    let dlp = DlpSettings::default();
    let audit: AuditSettings = toml::from_str("").expect("audit defaults");
    let policy = Policy {
        orgs: &cfg.orgs,
        roles: &[],
        users: &cfg.users,
        keys: &cfg.keys,
        sections: Sections::new()
            .with(&cfg.rate_limit)
            .with(&dlp)
            .with(&audit),
        models: &[],
        agents: &[],
        prices: sluice_filters::spend::no_prices(),
    };
    let shared = Shared::new(prometheus::Registry::new());
    ratelimit::build(&policy, &toml::Table::new(), "filters[1]", &shared)
        .unwrap_or_else(|e| panic!("build: {e}"))
}

/// Runs `iters` admission checks and returns the time they took.
async fn checks(filter: &dyn Filter, iters: u64) -> Duration {
    let identity = Identity {
        key_id: Arc::from("a1"),
        user: Arc::from("alice"),
        org: Arc::from("acme"),
        role: Arc::from("r"),
        grants: Arc::new(Grants::default()),
        ancestors: Arc::from([]),
    };
    let doc = json!({
        "model": "mock-echo",
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France, and why is it famous?"}
        ]
    });
    let mut body = JsonBody::parsed(Bytes::from(doc.to_string()), doc);
    let headers = HeaderMap::new();
    let method = Method::POST;
    let mut cx = Cx::new("bench".into(), Method::POST, "/v1/chat/completions".into());
    cx.route = CHAT;
    cx.identity = Some(identity);
    cx.max_tokens = Some(256);
    let start = Instant::now();
    for _ in 0..iters {
        let mut req = Request {
            method: &method,
            path: "/v1/chat/completions",
            headers: &headers,
            body: &mut body,
        };
        let v = filter.on_request(&mut req, &mut cx).await;
        assert!(matches!(v, Verdict::Continue), "the bench must only admit");
    }
    start.elapsed()
}

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(RedisServer, u16)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = RedisServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((server, port))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("ratelimit/check");

    let local = filter("backend = \"local\"");
    group.bench_function("local", |b| {
        b.iter_custom(|iters| rt.block_on(checks(&*local, iters)))
    });

    match start_redis() {
        Some((_server, port)) => {
            let redis = filter(&format!(
                "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"\n\
                 on_backend_error = \"deny\"\nredis_timeout_ms = 5000"
            ));
            // Connect before measuring.
            rt.block_on(checks(&*redis, 1));
            group.bench_function("redis", |b| {
                b.iter_custom(|iters| rt.block_on(checks(&*redis, iters)))
            });
        }
        None => eprintln!(
            "ratelimit/check/redis: skipped, `redis-server` is not installed \
             (Debian/Ubuntu: apt-get install -y redis-server)"
        ),
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
