//! The `rate_limit` filter through its public API, on both stores.
//!
//! Every behaviour is checked on the in-process store and on a real `redis-server` that each test
//! starts on a free port (`redis-server` must be installed: the README's test command installs
//! it). Limits are chosen so that refill during a test run is negligible (e.g. 1 request per
//! minute with a burst of 10): tests assert bucket behaviour, never timings.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_filters::audit::AuditSettings;
use sluice_filters::dlp::DlpSettings;
use sluice_filters::policy::{KeyConfig, OrgConfig, UserConfig};
use sluice_filters::ratelimit::{self, RateLimitSettings};
use sluice_filters::{
    Cx, Exchange, Filter, Grants, Identity, JsonBody, Outcome, Policy, PreAuthenticated, Reply,
    Request, Route, Sections, Shared, Usage, Verdict,
};

// ---------------------------------------------------------------------------------------------
// A real redis-server per test.

use crate::support::redis_server::RedisServer;

/// The governed routes these tests call.
const CHAT: Route = Route::Api(&sluice_filters::api::chat::ROUTE);

impl RedisServer {
    /// A raw command, for looking at what the filter stored.
    async fn query(&self, args: &[&str]) -> ::redis::Value {
        let client = ::redis::Client::open(self.url()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let mut cmd = ::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.expect("query")
    }
}

// ---------------------------------------------------------------------------------------------
// Config, identities, calls.

#[derive(Deserialize)]
struct TestConfig {
    #[serde(default)]
    orgs: Vec<OrgConfig>,
    #[serde(default)]
    users: Vec<UserConfig>,
    #[serde(default)]
    keys: Vec<KeyConfig>,
    #[serde(default)]
    rate_limit: RateLimitSettings,
}

/// One org `acme`; users `alice` and `bob`; keys `a1`, `a2` (alice) and `b1` (bob). `limits`
/// adds `rate_limit = {…}` lines: `org`, `alice`, `bob`, `a1`, `a2`, `b1`.
fn config(limits: &[(&str, &str)], settings: &str) -> TestConfig {
    let rl = |who: &str| {
        limits
            .iter()
            .find(|(w, _)| *w == who)
            .map(|(_, l)| format!("rate_limit = {{ {l} }}\n"))
            .unwrap_or_default()
    };
    let hash = |i: u8| format!("{:064x}", i);
    let text = format!(
        "[[orgs]]\nname = \"acme\"\n{}\n\
         [[users]]\nname = \"alice\"\norg = \"acme\"\nrole = \"r\"\n{}\n\
         [[users]]\nname = \"bob\"\norg = \"acme\"\nrole = \"r\"\n{}\n\
         [[keys]]\nid = \"a1\"\nuser = \"alice\"\nsha256 = \"{}\"\n{}\n\
         [[keys]]\nid = \"a2\"\nuser = \"alice\"\nsha256 = \"{}\"\n{}\n\
         [[keys]]\nid = \"b1\"\nuser = \"bob\"\nsha256 = \"{}\"\n{}\n\
         [rate_limit]\n{settings}\n",
        rl("org"),
        rl("alice"),
        rl("bob"),
        hash(1),
        rl("a1"),
        hash(2),
        rl("a2"),
        hash(3),
        rl("b1"),
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

#[derive(Clone, Copy, Debug)]
enum Store {
    Local,
    Redis,
}

/// A rate_limit filter on one store, and what it was built from.
struct Env {
    cfg: TestConfig,
    shared: Arc<Shared>,
    filter: Arc<dyn Filter>,
    _redis: Option<Arc<RedisServer>>,
}

impl Env {
    fn new(store: Store, limits: &[(&str, &str)]) -> Env {
        Env::with(store, limits, "")
    }

    fn with(store: Store, limits: &[(&str, &str)], extra: &str) -> Env {
        match store {
            Store::Local => Env::build(config(limits, extra), None),
            Store::Redis => {
                let redis = Arc::new(RedisServer::start());
                let settings = format!(
                    // Generous timeouts: a loaded CI machine must not turn into a backend error.
                    "backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 5000\nredis_connect_timeout_ms = 5000\n{extra}",
                    redis.url()
                );
                Env::build(config(limits, &settings), Some(redis))
            }
        }
    }

    /// Another instance (its own `Shared`, as another Sluice process) on the same store.
    fn second_instance(&self) -> Env {
        let settings = match &self._redis {
            Some(r) => format!(
                "backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 5000\nredis_connect_timeout_ms = 5000\n",
                r.url()
            ),
            None => String::new(),
        };
        let mut cfg: TestConfig = toml::from_str("").unwrap();
        cfg.orgs = self.cfg.orgs.clone();
        cfg.users = self.cfg.users.clone();
        cfg.keys = self.cfg.keys.clone();
        cfg.rate_limit = toml::from_str(&settings).unwrap();
        Env::build(cfg, self._redis.clone())
    }

    fn build(cfg: TestConfig, redis: Option<Arc<RedisServer>>) -> Env {
        let shared = Arc::new(Shared::new(prometheus::Registry::new()));
        let filter = build_filter(&cfg, &shared).unwrap_or_else(|e| panic!("build: {e}"));
        Env {
            cfg,
            shared,
            filter,
            _redis: redis,
        }
    }

    /// Builds the filter again on the same `Shared`, as a reload does.
    fn reload(&self, cfg: TestConfig) -> Env {
        let filter = build_filter(&cfg, &self.shared).unwrap_or_else(|e| panic!("build: {e}"));
        Env {
            cfg,
            shared: self.shared.clone(),
            filter,
            _redis: self._redis.clone(),
        }
    }

    fn identity(&self, key: &str) -> Identity {
        let user = &self
            .cfg
            .keys
            .iter()
            .find(|k| k.id == key)
            .expect("key")
            .user;
        let org = &self
            .cfg
            .users
            .iter()
            .find(|u| &u.name == user)
            .expect("user")
            .org;
        Identity {
            key_id: Arc::from(key),
            user: Arc::from(user.as_str()),
            org: Arc::from(org.as_str()),
            role: Arc::from("r"),
            grants: Arc::new(Grants::default()),
            ancestors: Arc::from([]),
        }
    }

    /// A chat completion by `key` whose prompt is estimated at 8 tokens (one 4-byte message),
    /// so it reserves `8 + max_tokens`.
    async fn chat(&self, key: &str, max_tokens: u64) -> (Verdict, Cx) {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "ping"}]});
        self.call(Some(key), CHAT, body, Some(max_tokens)).await
    }

    async fn models(&self, key: &str) -> (Verdict, Cx) {
        self.call(Some(key), Route::ListModels, Value::Null, None)
            .await
    }

    async fn call(
        &self,
        key: Option<&str>,
        route: Route,
        body: Value,
        max_tokens: Option<u64>,
    ) -> (Verdict, Cx) {
        let identity = key.map(|k| self.identity(k));
        call(&*self.filter, identity, route, body, max_tokens).await
    }

    /// `on_log` for a request, as the engine runs it after the exchange.
    async fn finish(&self, cx: &mut Cx, status: u16, outcome: Outcome, usage: Option<u64>) {
        cx.usage = usage.map(|total| Usage {
            prompt_tokens: 8.min(total),
            completion_tokens: total - 8.min(total),
            cached_prompt_tokens: 0,
        });
        let ex = Exchange {
            status,
            outcome,
            latency: Duration::from_millis(5),
            upstream_latency: Some(Duration::from_millis(4)),
            error_code: None,
        };
        self.filter.on_log(&ex, cx).await;
    }

    fn metric(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        metric(&self.shared, name, label)
    }
}

fn build_filter(
    cfg: &TestConfig,
    shared: &Shared,
) -> Result<Arc<dyn Filter>, sluice_filters::ConfigErrors> {
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
    ratelimit::build(&policy, &toml::Table::new(), "filters[1]", shared)
}

async fn call(
    filter: &dyn Filter,
    identity: Option<Identity>,
    route: Route,
    body: Value,
    max_tokens: Option<u64>,
) -> (Verdict, Cx) {
    let cx = Cx::new("req-1".into(), Method::POST, "/v1/chat/completions".into());
    call_in(filter, cx, identity, route, body, max_tokens).await
}

async fn call_in(
    filter: &dyn Filter,
    mut cx: Cx,
    identity: Option<Identity>,
    route: Route,
    body: Value,
    max_tokens: Option<u64>,
) -> (Verdict, Cx) {
    cx.route = route;
    // What the engine reads through the route's API.
    cx.api = match route {
        r if r == CHAT || r == Route::AgentRun => &sluice_filters::api::CHAT,
        _ => &sluice_filters::api::PASSTHROUGH,
    };
    cx.choices = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    cx.identity = identity;
    cx.max_tokens = max_tokens;
    let mut body = JsonBody::parsed(Bytes::from(body.to_string()), body);
    let headers = HeaderMap::new();
    let method = Method::POST;
    let mut req = Request {
        method: &method,
        path: "/v1/chat/completions",
        headers: &headers,
        body: &mut body,
    };
    let v = filter.on_request(&mut req, &mut cx).await;
    (v, cx)
}

fn metric(shared: &Shared, name: &str, label: Option<(&str, &str)>) -> f64 {
    shared
        .registry()
        .gather()
        .iter()
        .filter(|f| f.get_name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.get_name() == k && l.get_value() == v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

fn header(cx: &Cx, name: &str) -> Option<String> {
    cx.response_headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .and_then(|(_, v)| v.to_str().ok())
        .map(str::to_string)
}

fn admitted(v: &Verdict) -> bool {
    matches!(v, Verdict::Continue)
}

fn reply(v: Verdict) -> Reply {
    match v {
        Verdict::Respond(r) => r,
        Verdict::Continue => panic!("expected a local reply, the request was admitted"),
    }
}

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .iter()
        .find(|(n, _)| n.as_str() == "retry-after")
        .and_then(|(_, v)| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After")
}

fn error(r: &Reply) -> Value {
    let v: Value = serde_json::from_slice(&r.body).expect("JSON error body");
    v["error"].clone()
}

fn assert_429(r: &Reply) {
    assert_eq!(r.status.as_u16(), 429);
    assert_eq!(r.outcome, Outcome::RateLimited);
    let e = error(r);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_eq!(e["type"], "rate_limit_error");
}

/// Runs a scenario on both stores.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::Local).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::Redis).await;
                }
            )*
        }
    };
}

on_both_stores!(
    every_level_must_admit_and_a_refusal_charges_nothing,
    concurrent_requests_admit_exactly_the_limit,
    concurrent_token_reservations_admit_exactly_the_limit,
    two_instances_share_one_limit,
    headers_describe_the_tightest_bucket,
    retry_after_is_when_the_request_fits,
    a_reservation_larger_than_the_bucket_never_fits,
    reconcile_returns_unused_and_charges_extra_tokens,
    a_failed_request_releases_its_tokens_but_not_its_request,
    a_success_without_usage_keeps_the_reservation,
    token_limits_apply_only_where_tokens_are_consumed,
    an_async_agent_run_is_one_request_and_its_tokens_once,
    a_reload_keeps_bucket_state,
);

// ---------------------------------------------------------------------------------------------
// Scenarios.

async fn every_level_must_admit_and_a_refusal_charges_nothing(store: Store) {
    // The org allows 3 requests at once, key a1 only 2; a2 and b1 have no key limit.
    let env = Env::new(
        store,
        &[
            ("org", "requests_per_minute = 1, burst = 3"),
            ("a1", "requests_per_minute = 1, burst = 2"),
        ],
    );
    assert!(admitted(&env.chat("a1", 10).await.0));
    assert!(admitted(&env.chat("a1", 10).await.0));
    // a1 is out; the org still has one request left and must keep it.
    let (v, _) = env.chat("a1", 10).await;
    let r = reply(v);
    assert_429(&r);
    assert!(error(&r)["message"].as_str().unwrap().contains("key `a1`"));
    assert!(
        admitted(&env.chat("b1", 10).await.0),
        "the org bucket was charged for a refusal"
    );
    // Now the org is out for everyone.
    let (v, _) = env.chat("a2", 10).await;
    let r = reply(v);
    assert_429(&r);
    assert!(error(&r)["message"]
        .as_str()
        .unwrap()
        .contains("org `acme`"));
    assert_eq!(
        env.metric("sluice_rate_limited_total", Some(("level", "key"))),
        1.0
    );
    assert_eq!(
        env.metric("sluice_rate_limited_total", Some(("level", "org"))),
        1.0
    );
    assert_eq!(
        env.metric("sluice_rate_limited_total", Some(("level", "user"))),
        0.0
    );
}

async fn fire(
    filter: Arc<dyn Filter>,
    identity: Identity,
    n: usize,
    max_tokens: u64,
) -> Vec<Verdict> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (f, id, b) = (filter.clone(), identity.clone(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                let body = json!({"model": "m", "messages": [{"role": "user", "content": "ping"}]});
                call(&*f, Some(id), CHAT, body, Some(max_tokens)).await.0
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

async fn concurrent_requests_admit_exactly_the_limit(store: Store) {
    let env = Env::new(
        store,
        &[
            ("org", "requests_per_minute = 1, burst = 1000"),
            ("alice", "requests_per_minute = 1, burst = 1000"),
            ("a1", "requests_per_minute = 1, burst = 10"),
        ],
    );
    let verdicts = fire(env.filter.clone(), env.identity("a1"), 50, 10).await;
    let ok = verdicts.iter().filter(|v| admitted(v)).count();
    assert_eq!(ok, 10);
    for v in verdicts.into_iter().filter(|v| !admitted(v)) {
        assert_429(&reply(v));
    }
    // Every admitted request charged the org and the user too, none of the refused ones did.
    let (_, cx) = env.models("b1").await;
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("989")
    );
}

async fn concurrent_token_reservations_admit_exactly_the_limit(store: Store) {
    // Each request reserves 8 + 92 = 100 tokens; the key holds 1000.
    let env = Env::new(
        store,
        &[("a1", "tokens_per_minute = 1, token_burst = 1000")],
    );
    let verdicts = fire(env.filter.clone(), env.identity("a1"), 50, 92).await;
    assert_eq!(verdicts.iter().filter(|v| admitted(v)).count(), 10);
}

async fn two_instances_share_one_limit(store: Store) {
    let one = Env::new(store, &[("org", "requests_per_minute = 1, burst = 10")]);
    let two = one.second_instance();
    let (a, b) = tokio::join!(
        fire(one.filter.clone(), one.identity("a1"), 50, 10),
        fire(two.filter.clone(), two.identity("b1"), 50, 10),
    );
    let ok = a.iter().chain(b.iter()).filter(|v| admitted(v)).count();
    match store {
        // One limit across both instances.
        Store::Redis => assert_eq!(ok, 10),
        // In-process buckets are per instance: this is why `backend = "redis"` exists.
        Store::Local => assert_eq!(ok, 20),
    }
}

async fn headers_describe_the_tightest_bucket(store: Store) {
    let env = Env::new(
        store,
        &[
            (
                "org",
                "requests_per_minute = 100, tokens_per_minute = 100000",
            ),
            ("alice", "requests_per_minute = 10"),
            ("a1", "requests_per_minute = 50, tokens_per_minute = 6000"),
        ],
    );
    let (v, cx) = env.chat("a1", 992).await;
    assert!(admitted(&v));
    // Requests: alice's bucket (9 of 10 left) is tighter than a1's (49 of 50) and the org's.
    assert_eq!(
        header(&cx, "x-ratelimit-limit-requests").as_deref(),
        Some("10")
    );
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("9")
    );
    // One request refills in 6 s at 10 per minute.
    assert_eq!(
        header(&cx, "x-ratelimit-reset-requests").as_deref(),
        Some("6s")
    );
    // Tokens: a1 reserved 1000 of 6000; 1000 tokens refill in 10 s at 6000 per minute.
    assert_eq!(
        header(&cx, "x-ratelimit-limit-tokens").as_deref(),
        Some("6000")
    );
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("5000")
    );
    assert_eq!(
        header(&cx, "x-ratelimit-reset-tokens").as_deref(),
        Some("10s")
    );

    // A route without token consumption carries only the request trio.
    let (v, cx) = env.models("a1").await;
    assert!(admitted(&v));
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("8")
    );
    assert_eq!(header(&cx, "x-ratelimit-limit-tokens"), None);

    // The 429 carries them too.
    let env = Env::new(store, &[("b1", "requests_per_minute = 1")]);
    assert!(admitted(&env.chat("b1", 1).await.0));
    let (v, cx) = env.chat("b1", 1).await;
    assert_429(&reply(v));
    assert_eq!(
        header(&cx, "x-ratelimit-limit-requests").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );

    // No identity (no auth filter): nothing to limit, nothing to report.
    let (v, cx) = env.call(None, CHAT, json!({}), None).await;
    assert!(admitted(&v));
    assert!(cx.response_headers.is_empty());
}

async fn retry_after_is_when_the_request_fits(store: Store) {
    // One request per minute: the second must wait (almost) a full minute.
    let env = Env::new(store, &[("a1", "requests_per_minute = 1")]);
    assert!(admitted(&env.chat("a1", 1).await.0));
    let r = reply(env.chat("a1", 1).await.0);
    assert_429(&r);
    let secs = retry_after(&r);
    assert!((59..=60).contains(&secs), "Retry-After {secs}");

    // Tokens: 600 per minute = 10 per second. After a reservation of 300, 300 are left; a
    // reservation of 400 needs 100 more: 10 s.
    let env = Env::new(store, &[("a1", "tokens_per_minute = 600")]);
    assert!(admitted(&env.chat("a1", 292).await.0));
    let r = reply(env.chat("a1", 392).await.0);
    assert_429(&r);
    let secs = retry_after(&r);
    assert!((9..=10).contains(&secs), "Retry-After {secs}");
    let msg = error(&r)["message"].as_str().unwrap().to_string();
    assert!(msg.contains("tokens per minute"), "{msg}");
    assert!(msg.contains("reserves 400 tokens"), "{msg}");
    // The bucket that decides is the one that needs longest, not the first that refuses.
    let env = Env::new(
        store,
        &[
            ("org", "requests_per_minute = 60, burst = 1"),
            ("a1", "requests_per_minute = 1"),
        ],
    );
    assert!(admitted(&env.chat("a1", 1).await.0));
    let r = reply(env.chat("a1", 1).await.0);
    assert!((59..=60).contains(&retry_after(&r)));
    assert_eq!(
        env.metric("sluice_rate_limited_total", Some(("level", "key"))),
        1.0
    );
}

async fn a_reservation_larger_than_the_bucket_never_fits(store: Store) {
    let env = Env::new(
        store,
        &[
            ("org", "tokens_per_minute = 1, token_burst = 100000"),
            (
                "a1",
                "requests_per_minute = 1, tokens_per_minute = 1, token_burst = 1000",
            ),
        ],
    );
    let (v, cx) = env.chat("a1", 5000).await;
    let r = reply(v);
    assert_429(&r);
    let msg = error(&r)["message"].as_str().unwrap().to_string();
    assert!(msg.contains("can never fit"), "{msg}");
    assert!(msg.contains("max_tokens"), "{msg}");
    assert!(msg.contains("key `a1`"), "{msg}");
    assert_eq!(retry_after(&r), 60);
    // The caller still learns where its buckets stand.
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("1000")
    );
    assert_eq!(
        env.metric("sluice_rate_limited_total", Some(("level", "key"))),
        1.0
    );
    // Nothing was charged: neither the request nor the org's tokens.
    let (v, cx) = env.chat("a1", 992).await;
    assert!(admitted(&v));
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    let (_, cx) = env.chat("b1", 0).await;
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("98992")
    );
}

async fn reconcile_returns_unused_and_charges_extra_tokens(store: Store) {
    // 1 token per minute of refill: the bucket moves only by what requests do.
    let env = Env::new(
        store,
        &[("a1", "tokens_per_minute = 1, token_burst = 1000")],
    );
    let (v, mut cx) = env.chat("a1", 492).await;
    assert!(admitted(&v));
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("500")
    );
    // It used 100: 400 come back.
    env.finish(&mut cx, 200, Outcome::Ok, Some(100)).await;
    let (v, mut cx) = env.chat("a1", 92).await;
    assert!(admitted(&v));
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("800")
    );
    // It used 1000 where 100 were reserved: 900 more are charged, 100 more than were left.
    env.finish(&mut cx, 200, Outcome::Ok, Some(1000)).await;
    // The bucket is in debt: even a small request (8 tokens) waits until refill has paid the
    // 100 tokens of debt and its own 8: 108 minutes at 1 token per minute.
    let (v, cx) = env.chat("a1", 0).await;
    let r = reply(v);
    assert_429(&r);
    let secs = retry_after(&r);
    assert!((6479..=6480).contains(&secs), "Retry-After {secs}");
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    assert_eq!(
        env.metric(
            "sluice_rate_limit_reconciled_tokens_total",
            Some(("direction", "returned"))
        ),
        400.0
    );
    assert_eq!(
        env.metric(
            "sluice_rate_limit_reconciled_tokens_total",
            Some(("direction", "charged"))
        ),
        900.0
    );
}

async fn a_failed_request_releases_its_tokens_but_not_its_request(store: Store) {
    let env = Env::new(
        store,
        &[(
            "a1",
            "requests_per_minute = 1, burst = 5, tokens_per_minute = 1, token_burst = 1000",
        )],
    );
    for (status, outcome) in [
        (502, Outcome::UpstreamError),
        (400, Outcome::DlpBlocked),
        (0, Outcome::ClientClosed),
    ] {
        let (v, mut cx) = env.chat("a1", 592).await;
        assert!(admitted(&v));
        assert_eq!(
            header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
            Some("400")
        );
        env.finish(&mut cx, status, outcome, None).await;
    }
    let (_, cx) = env.chat("a1", 0).await;
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("992")
    );
    // Three failed requests and this one: 4 of 5 requests are gone.
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("1")
    );
}

async fn a_success_without_usage_keeps_the_reservation(store: Store) {
    let env = Env::new(
        store,
        &[("a1", "tokens_per_minute = 1, token_burst = 1000")],
    );
    let (_, mut cx) = env.chat("a1", 592).await;
    env.finish(&mut cx, 200, Outcome::Ok, None).await;
    let (_, cx) = env.chat("a1", 0).await;
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("392")
    );
}

async fn token_limits_apply_only_where_tokens_are_consumed(store: Store) {
    let env = Env::new(store, &[("a1", "tokens_per_minute = 1, token_burst = 100")]);
    // Listing models costs no tokens, and a1 has no request limit: no bucket applies.
    let (v, cx) = env.models("a1").await;
    assert!(admitted(&v));
    assert!(cx.response_headers.is_empty());
    // An agent run is limited like a chat completion: input 8 bytes = 2 tokens + 7 framing.
    let (v, cx) = env
        .call(
            Some("a1"),
            Route::AgentRun,
            json!({"input": "abcdefgh"}),
            Some(50),
        )
        .await;
    assert!(admitted(&v));
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("41")
    );
    // Without max_tokens, default_max_tokens (4096) is reserved: more than the bucket holds.
    let (v, _) = env
        .call(Some("a1"), CHAT, json!({"messages": []}), None)
        .await;
    let msg = error(&reply(v))["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("can never fit") && msg.contains("4096"),
        "{msg}"
    );
}

async fn an_async_agent_run_is_one_request_and_its_tokens_once(store: Store) {
    let env = Env::new(
        store,
        &[(
            "a1",
            "requests_per_minute = 1, burst = 5, tokens_per_minute = 1, token_burst = 1000",
        )],
    );
    // The engine rewrites a run into a chat completion before the chain sees it: 8 + 92 tokens.
    let run = json!({"model": "m", "messages": [{"role": "user", "content": "ping"}]});
    // The acceptance: admitted, then answered 202 while the run is queued.
    let (v, mut accepted) = env
        .call(Some("a1"), Route::AgentRun, run.clone(), Some(92))
        .await;
    assert!(admitted(&v));
    assert_eq!(
        header(&accepted, "x-ratelimit-remaining-requests").as_deref(),
        Some("4")
    );
    assert_eq!(
        header(&accepted, "x-ratelimit-remaining-tokens").as_deref(),
        Some("900")
    );
    env.finish(&mut accepted, 202, Outcome::Ok, None).await;
    // The engine's execution on the caller's behalf: no second request, its own tokens.
    let mut cx = Cx::new("req-2".into(), Method::POST, "/v1/agents/x/run".into());
    cx.extensions.insert(PreAuthenticated);
    let (v, mut executed) = call_in(
        &*env.filter,
        cx,
        Some(env.identity("a1")),
        Route::AgentRun,
        run,
        Some(92),
    )
    .await;
    assert!(admitted(&v));
    assert_eq!(
        header(&executed, "x-ratelimit-remaining-tokens").as_deref(),
        Some("900")
    );
    env.finish(&mut executed, 200, Outcome::Ok, Some(50)).await;
    // One request and 50 tokens in all.
    let (_, cx) = env.chat("a1", 0).await;
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("3")
    );
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-tokens").as_deref(),
        Some("942")
    );
}

async fn a_reload_keeps_bucket_state(store: Store) {
    let env = Env::new(store, &[("a1", "requests_per_minute = 1, burst = 3")]);
    assert!(admitted(&env.chat("a1", 1).await.0));
    assert!(admitted(&env.chat("a1", 1).await.0));
    // Same limits after a reload: one request left, not three.
    let same = match store {
        Store::Local => config(&[("a1", "requests_per_minute = 1, burst = 3")], ""),
        Store::Redis => {
            let url = env._redis.as_ref().unwrap().url();
            config(
                &[("a1", "requests_per_minute = 1, burst = 3")],
                &format!("backend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout_ms = 5000\nredis_connect_timeout_ms = 5000\n"),
            )
        }
    };
    let reloaded = env.reload(same);
    assert!(admitted(&reloaded.chat("a1", 1).await.0));
    assert_429(&reply(reloaded.chat("a1", 1).await.0));
    // Metrics are registered once per process and keep counting.
    assert_eq!(
        reloaded.metric("sluice_rate_limited_total", Some(("level", "key"))),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Redis only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_share_the_org_hash_tag_and_expire() {
    let env = Env::new(
        Store::Redis,
        &[
            ("org", "requests_per_minute = 100"),
            ("alice", "requests_per_minute = 100"),
            ("a1", "requests_per_minute = 100, tokens_per_minute = 10000"),
        ],
    );
    assert!(admitted(&env.chat("a1", 10).await.0));
    let redis = env._redis.as_ref().unwrap();
    let keys = match redis.query(&["KEYS", "*"]).await {
        ::redis::Value::Array(v) => v,
        other => panic!("KEYS: {other:?}"),
    };
    let mut names: Vec<String> = keys
        .iter()
        .map(|k| match k {
            ::redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "sluice:rl:{acme}:key:a1",
            "sluice:rl:{acme}:org",
            "sluice:rl:{acme}:user:alice",
        ]
    );
    for k in &names {
        match redis.query(&["PTTL", k]).await {
            // At most the time to refill completely, plus a second of slack.
            ::redis::Value::Int(ms) => assert!(ms > 0 && ms <= 2_000, "{k}: PTTL {ms}"),
            other => panic!("PTTL: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_allow_and_deny_then_recovery() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let limits = [("a1", "requests_per_minute = 1, burst = 1000")];
    let settings = |mode: &str| {
        format!(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"\n\
             on_backend_error = \"{mode}\"\nredis_timeout_ms = 200\n"
        )
    };
    let allow = Env::build(config(&limits, &settings("allow")), None);
    let deny = Env::build(config(&limits, &settings("deny")), None);
    let (v, cx) = allow.chat("a1", 1).await;
    assert!(admitted(&v));
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("999")
    );
    assert!(admitted(&deny.chat("a1", 1).await.0));

    redis.stop();
    // allow: decided on this instance's own buckets, which shadowed Redis while it was up
    // (the call before counts: 1000 - 2 left).
    let (v, cx) = allow.chat("a1", 1).await;
    assert!(admitted(&v));
    assert_eq!(
        header(&cx, "x-ratelimit-remaining-requests").as_deref(),
        Some("998")
    );
    // deny: 503, never blamed on the caller with a 429.
    let r = reply(deny.chat("a1", 1).await.0);
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(error(&r)["code"], "rate_limit_unavailable");
    assert_eq!(retry_after(&r), 1);
    assert!(
        allow.metric(
            "sluice_rate_limit_backend_errors_total",
            Some(("op", "check"))
        ) >= 1.0
    );
    assert!(
        deny.metric(
            "sluice_rate_limit_backend_errors_total",
            Some(("op", "check"))
        ) >= 1.0
    );

    // Redis comes back (empty: it kept nothing): both recover by themselves, and count there
    // again (a fresh bucket's 999 left, where the local one has fewer).
    let _redis = RedisServer::start_on(port);
    // (The two gateways share the Redis bucket: deny's first call there leaves 998.)
    for (env, fresh) in [(&allow, "999"), (&deny, "998")] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (v, cx) = env.chat("a1", 1).await;
            let left = header(&cx, "x-ratelimit-remaining-requests");
            if admitted(&v) && left.as_deref() == Some(fresh) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no recovery after Redis came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn building_never_waits_for_redis() {
    // Nothing listens on this port.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let cfg = config(
        &[("a1", "requests_per_minute = 10")],
        &format!(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"\non_backend_error = \"deny\""
        ),
    );
    let env = Env::build(cfg, None);
    let r = reply(env.chat("a1", 1).await.0);
    assert_eq!(r.status.as_u16(), 503);
    // A request during the back-off after a failed connection attempt is answered at once,
    // with the same decision.
    let r = reply(env.chat("a1", 1).await.0);
    assert_eq!(r.status.as_u16(), 503);
}

#[test]
fn unknown_options_are_config_errors() {
    let cfg = config(&[], "");
    let shared = Shared::new(prometheus::Registry::new());
    let dlp = DlpSettings::default();
    let audit: AuditSettings = toml::from_str("").unwrap();
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
    let options: toml::Table = toml::from_str("backend = \"redis\"").unwrap();
    let err = ratelimit::build(&policy, &options, "filters[1]", &shared)
        .err()
        .expect("an unknown option is an error");
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].path, "filters[1].backend");

    let bad: TestConfig = toml::from_str("[rate_limit]\nbackend = \"redis\"").unwrap();
    let policy = Policy {
        sections: Sections::new().with(&bad.rate_limit),
        ..policy
    };
    let err = ratelimit::build(&policy, &toml::Table::new(), "filters[1]", &shared)
        .err()
        .expect("redis without a URL is an error");
    assert_eq!(err.0[0].path, "rate_limit.redis_url");
}
