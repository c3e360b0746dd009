//! Rate limits through real gateways: real sockets, the built-in mock upstream, a real
//! `redis-server` per test (the README's test command installs it).

use std::time::{Duration, Instant};

use crate::support::redis_server;
use crate::support::*;
use serde_json::{json, Value};
use sluice::{Gateway, GatewayBuilder};

const KEY: &str = "sk-sluice-RATElimitRATElimitRATElimitRATElimitRATE";

use redis_server::RedisServer;

/// One org, user and key (`KEY`), the key limited by `limit`; `[rate_limit]` from `settings`.
fn config(limit: &str, settings: &str) -> String {
    format!(
        r#"{MOCK}
{directory}
[rate_limit]
{settings}
"#,
        directory = Directory::role("analyst", &["chat", "models:list"], &["mock-*"])
            .key_with("alice-laptop", KEY, &format!("rate_limit = {{ {limit} }}"))
            .filters(&["auth", "rate_limit"])
            .toml(),
    )
}

fn gateway(cfg: &str) -> Gateway {
    // Registered explicitly so these tests run whether or not the engine's built-in list
    // already names `rate_limit` (registering it again replaces it with the same factory).
    start_with(
        GatewayBuilder::new().filter_type("rate_limit", sluice::filters::ratelimit::build),
        cfg,
    )
}

fn chat(gw: &Gateway, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(url(gw, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

fn header(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[test]
fn two_gateways_sharing_redis_admit_one_limit() {
    let redis = RedisServer::start();
    let settings = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 5000\nredis_connect_timeout_ms = 5000\n",
        redis.url()
    );
    let cfg = config("requests_per_minute = 1, burst = 10", &settings);
    let (a, b) = (gateway(&cfg), gateway(&cfg));
    let barrier = std::sync::Barrier::new(40);
    let results: Vec<(u16, Option<String>, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let (gw, barrier) = (if i % 2 == 0 { &a } else { &b }, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let resp = chat(gw, &chat_body("hello", false));
                    let status = resp.status().as_u16();
                    let retry = header(&resp, "retry-after");
                    let limit = header(&resp, "x-ratelimit-limit-requests");
                    let code = if status == 429 {
                        error_code(resp, 429)
                    } else {
                        String::new()
                    };
                    (status, retry, limit, code)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, 10, "one limit of 10 across both gateways: {results:?}");
    for (status, retry, limit, code) in &results {
        assert_eq!(limit.as_deref(), Some("10"));
        if *status != 200 {
            assert_eq!(*status, 429);
            assert_eq!(code, "rate_limit_exceeded");
            let secs: u64 = retry
                .as_deref()
                .and_then(|r| r.parse().ok())
                .expect("Retry-After");
            // 1 request per minute: the next one fits in (almost) a minute.
            assert!((59..=60).contains(&secs), "Retry-After {secs}");
        }
    }
    let limited = metric_sum(
        &metrics(&a),
        "sluice_rate_limited_total",
        &["level=\"key\""],
    ) + metric_sum(
        &metrics(&b),
        "sluice_rate_limited_total",
        &["level=\"key\""],
    );
    assert_eq!(limited, 30.0);
}

#[test]
fn tokens_are_reserved_then_reconciled_from_usage_streamed_or_not() {
    // 1 token per minute of refill: the bucket moves only by what requests do.
    let gw = gateway(&config("tokens_per_minute = 1, token_burst = 100000", ""));
    let body = json!({"model": "mock-echo", "max_tokens": 100,
                      "messages": [{"role": "user", "content": "alpha beta gamma"}]});
    // Reserved: 4 + 4 + 3 (the estimated prompt) + 100 (max_tokens).
    let reserved = 111.0;
    let resp = chat(&gw, &body);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-limit-tokens").as_deref(),
        Some("100000")
    );
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-tokens").as_deref(),
        Some("99889")
    );
    let usage = json_of(resp)["usage"]["total_tokens"]
        .as_f64()
        .expect("the mock reports usage");
    let returned = "sluice_rate_limit_reconciled_tokens_total";
    wait_metric(&gw, returned, &["direction=\"returned\""], reserved - usage);

    // Streamed, without the client asking for usage: Sluice asks, reconciles, and hides it.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = chat(&gw, &streamed);
    assert_eq!(resp.status().as_u16(), 200);
    let remaining: f64 = header(&resp, "x-ratelimit-remaining-tokens")
        .and_then(|v| v.parse().ok())
        .expect("token headers on a stream");
    assert_eq!(remaining, 100000.0 - usage - reserved);
    let (text, chunks, done) = collect_stream(resp);
    assert!(done && text.contains("alpha"));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );
    wait_metric(
        &gw,
        returned,
        &["direction=\"returned\""],
        2.0 * (reserved - usage),
    );

    let resp = chat(&gw, &body);
    let remaining: f64 = header(&resp, "x-ratelimit-remaining-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(remaining, 100000.0 - 2.0 * usage - reserved);

    // A request that could never fit is refused at once, and says why.
    let huge = json!({"model": "mock-echo", "max_tokens": 1000000,
                      "messages": [{"role": "user", "content": "hi"}]});
    let resp = chat(&gw, &huge);
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("60"));
    let v = json_of(resp);
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("can never fit") && msg.contains("max_tokens"),
        "{v}"
    );
}

#[test]
fn rate_limit_headers_on_every_authenticated_response() {
    let gw = gateway(&config("requests_per_minute = 1, burst = 2", ""));
    let models = client()
        .get(url(&gw, "/v1/models"))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    assert_eq!(models.status().as_u16(), 200);
    assert_eq!(
        header(&models, "x-ratelimit-limit-requests").as_deref(),
        Some("2")
    );
    assert_eq!(
        header(&models, "x-ratelimit-remaining-requests").as_deref(),
        Some("1")
    );
    assert!(header(&models, "x-ratelimit-reset-requests").is_some());
    assert_eq!(header(&models, "x-ratelimit-limit-tokens"), None);
    let resp = chat(&gw, &chat_body("hello", false));
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let resp = chat(&gw, &chat_body("hello", false));
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert!(header(&resp, "retry-after").is_some());
    assert_eq!(error_code(resp, 429), "rate_limit_exceeded");
    // Not authenticated: nobody to describe.
    let anon = client()
        .post(url(&gw, "/v1/chat/completions"))
        .json(&chat_body("hello", false))
        .send()
        .unwrap();
    assert_eq!(header(&anon, "x-ratelimit-limit-requests"), None);
    assert_eq!(error_code(anon, 401), "missing_api_key");
}

#[test]
fn redis_outage_denies_with_503_and_the_gateway_recovers() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let settings = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\non_backend_error = \"deny\"",
        redis.url()
    );
    let gw = gateway(&config("requests_per_minute = 1, burst = 1000", &settings));
    assert_eq!(chat(&gw, &chat_body("hello", false)).status().as_u16(), 200);
    redis.stop();
    let resp = chat(&gw, &chat_body("hello", false));
    assert_eq!(error_code(resp, 503), "rate_limit_unavailable");
    assert!(metric_sum(&metrics(&gw), "sluice_rate_limit_backend_errors_total", &[]) >= 1.0);
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while chat(&gw, &chat_body("hello", false)).status().as_u16() != 200 {
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
