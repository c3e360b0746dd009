//! Spend (SPEC §15) on a real gateway: prices turn every route's usage into a cost (audit
//! `cost_usd`, metrics, the usage APIs), budgets refuse with each API's shape, concurrent
//! requests cannot overspend, and spend survives a SIGKILL of `sluice run`.

use std::time::Duration;

use crate::support::process::SluiceProcess;
use crate::support::spend;
use crate::support::{admin_url, client, metric_sum, metrics, start, url};
use serde_json::{json, Value};
use spend::{chat, config, fire, header, reservation, spent, usage, words, Env, ALICE, BOB};

const BIG: &str = "{ usd = 1000000, period = \"monthly\" }";

#[test]
fn every_route_shape_is_priced_audited_counted_and_reported() {
    let env = Env::new();
    let gw = start(&config(&env.store(), &env.audit(), BIG));
    let base = format!("http://{}", gw.listen_addr());

    // Non-streamed chat: 3 prompt words, 3 echoed back → $6.
    let r = chat(
        &base,
        ALICE,
        "mock-echo",
        "one two three",
        50,
        "priced-chat",
    );
    assert_eq!(r.status().as_u16(), 200);
    let remaining: f64 = header(&r, "x-sluice-budget-remaining-usd")
        .expect("a budget applies: remaining header")
        .parse()
        .expect("a decimal");
    assert!(
        remaining < 1_000_000.0 && remaining > 999_000.0,
        "{remaining}"
    );
    // The real cost is on the head of a non-streamed answer.
    let cost: f64 = header(&r, "x-sluice-cost-usd")
        .expect("x-sluice-cost-usd on a non-streamed answer")
        .parse()
        .expect("a decimal");
    let body: Value = r.json().expect("json");
    let tokens = body["usage"]["total_tokens"].as_f64().expect("usage");
    assert_eq!(env.record("priced-chat")["cost_usd"].as_f64(), Some(tokens));
    assert_eq!(cost, tokens);

    // Streamed chat: the usage of the stream's last chunk is priced too.
    let r = client()
        .post(url(&gw, "/v1/chat/completions"))
        .bearer_auth(ALICE)
        .header("x-request-id", "priced-stream")
        .json(&json!({"model": "mock-echo", "stream": true,
            "messages": [{"role": "user", "content": "four words right here"}]}))
        .send()
        .expect("stream");
    assert_eq!(r.status().as_u16(), 200);
    // A stream's head leaves before its usage: its cost is in the record only.
    assert_eq!(header(&r, "x-sluice-cost-usd"), None);
    let _ = r.text();
    let rec = env.record("priced-stream");
    let u = &rec["usage"];
    let total =
        u["prompt_tokens"].as_f64().unwrap_or(0.0) + u["completion_tokens"].as_f64().unwrap_or(0.0);
    assert!(total > 0.0, "{rec}");
    assert_eq!(rec["cost_usd"].as_f64(), Some(total), "{rec}");

    // Streamed Responses API and Anthropic Messages (their own usage shapes).
    let r = client()
        .post(url(&gw, "/v1/responses"))
        .bearer_auth(ALICE)
        .header("x-request-id", "priced-responses")
        .json(&json!({"model": "mock-echo", "stream": true, "input": "five words in the input"}))
        .send()
        .expect("responses");
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.text();
    let rec = env.record("priced-responses");
    assert!(rec["cost_usd"].as_f64().unwrap_or(0.0) >= 10.0, "{rec}");
    let r = client()
        .post(url(&gw, "/v1/messages"))
        .header("x-api-key", ALICE)
        .header("anthropic-version", "2023-06-01")
        .header("x-request-id", "priced-messages")
        .json(
            &json!({"model": "claude-test", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "six words for the anthropic route"}]}),
        )
        .send()
        .expect("messages");
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.text();
    let rec = env.record("priced-messages");
    assert!(rec["cost_usd"].as_f64().unwrap_or(0.0) >= 12.0, "{rec}");

    // An unpriced model costs 0 and is counted.
    let r = chat(&base, ALICE, "mock-free", "free words", 10, "unpriced");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "x-sluice-cost-usd").as_deref(), Some("0.000000"));
    let _ = r.text();
    assert_eq!(env.record("unpriced")["cost_usd"].as_f64(), Some(0.0));
    let m = metrics(&gw);
    assert_eq!(
        metric_sum(
            &m,
            "sluice_unpriced_requests_total",
            &["model=\"mock-free\""]
        ),
        1.0
    );
    let priced: f64 = [
        "priced-chat",
        "priced-stream",
        "priced-responses",
        "priced-messages",
    ]
    .iter()
    .map(|id| env.record(id)["cost_usd"].as_f64().unwrap_or(0.0))
    .sum();
    let by_metric = metric_sum(&m, "sluice_spend_usd_total", &["org=\"acme\""]);
    assert!((by_metric - priced).abs() < 1e-6, "{by_metric} vs {priced}");
    for level in ["org", "user", "key"] {
        assert!(
            m.contains(&format!(
                "sluice_budget_exceeded_total{{level=\"{level}\"}} 0"
            )),
            "pre-created at zero: {level}"
        );
    }

    // The usage API: the caller's own rows, per day and model, and its budget.
    let u = usage(&base, ALICE);
    assert_eq!(u["object"], "usage");
    assert_eq!(u["user"], "alice");
    assert!((spent(&u) - priced).abs() < 1e-6, "{u}");
    let requests: i64 = u["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|r| r["requests"].as_i64()).sum())
        .unwrap_or(0);
    assert_eq!(requests, 5, "{u}");
    assert_eq!(u["budget"]["period"], "monthly");
    assert_eq!(u["budget"]["usd"].as_f64(), Some(1_000_000.0));
    assert!(
        (u["budget"]["spent_usd"].as_f64().unwrap_or(0.0) - priced).abs() < 1e-6,
        "{u}"
    );
    assert!(
        u["budget"]["resets_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("Z") || t.contains("+00:00")),
        "{u}"
    );
    // Bob has spent nothing and has no budget.
    let u = usage(&base, BOB);
    assert_eq!(u["data"], json!([]));
    assert_eq!(u["budget"], Value::Null);
    let r = client()
        .get(url(&gw, "/v1/usage?from=2026-13-01"))
        .bearer_auth(BOB)
        .send()
        .expect("bad");
    assert_eq!(r.status().as_u16(), 400);

    // The admin view, grouped.
    let r = client()
        .get(admin_url(&gw, "/admin/v1/usage?group_by=model"))
        .send()
        .expect("admin usage");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["object"], "list");
    let models: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["model"].as_str())
        .collect();
    assert_eq!(models, ["claude-test", "mock-echo", "mock-free"], "{v}");
    let r = client()
        .get(admin_url(&gw, "/admin/v1/usage?group_by=user"))
        .send()
        .expect("admin usage");
    let v: Value = r.json().expect("json");
    assert_eq!(v["data"][0]["user"], "alice", "{v}");
    assert!(
        (v["data"][0]["cost_usd"].as_f64().unwrap_or(0.0) - priced).abs() < 1e-6,
        "{v}"
    );
    let r = client()
        .get(admin_url(&gw, "/admin/v1/usage?group_by=team"))
        .send()
        .expect("admin usage");
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn fifty_concurrent_requests_never_overspend_a_budget_that_fits_ten() {
    let env = Env::new();
    // 20 prompt words echoed back: each request really costs $40.
    let text = words(20);
    let gw = start(&config(
        &env.store(),
        &env.audit(),
        "{ usd = 400, period = \"daily\" }",
    ));
    let base = format!("http://{}", gw.listen_addr());
    let reserved = reservation(&base, &text, 20);
    assert!(
        reserved >= 40.0,
        "the worst case covers the real cost: {reserved}"
    );

    let (answers, ok) = fire(std::slice::from_ref(&base), &text, 50, "c");
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(ok >= 1 && !refused.is_empty(), "{ok} admitted");
    // Reported, not asserted: how the 50 went.
    eprintln!(
        "reservation ${reserved} per request; {ok} admitted, {} refused",
        refused.len()
    );
    for (_, retry, body) in &refused {
        assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
        assert_eq!(body["error"]["code"], "budget_exceeded");
        let msg = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("user `alice`") && msg.contains("resets at"),
            "{msg}"
        );
        let secs: u64 = retry
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("Retry-After");
        assert!((1..=86_400).contains(&secs), "{secs}");
    }
    // Audit and metrics agree on the refusals (a record is written after the request's spend
    // is settled: the chain logs in order, rate_limit before audit).
    for (i, answer) in answers.iter().enumerate() {
        let rec = env.record(&format!("c-{i}"));
        let want = if answer.0 == 200 {
            "ok"
        } else {
            "budget_exceeded"
        };
        assert_eq!(rec["outcome"], want, "{rec}");
    }
    // Every admitted request held a worst-case reservation at least its real cost: together
    // they can never have spent more than the budget.
    let u = usage(&base, ALICE);
    let total = spent(&u);
    assert_eq!(total, 40.0 * ok as f64, "{u}");
    assert!(total <= 400.0, "spent ${total} of a $400 budget");
    let m = metrics(&gw);
    assert_eq!(
        metric_sum(&m, "sluice_budget_exceeded_total", &["level=\"user\""]),
        refused.len() as f64
    );
    // Once the budget cannot hold another worst case, the next request is refused, in
    // Anthropic's shape on its route.
    if total + reserved > 400.0 {
        let r = client()
            .post(url(&gw, "/v1/messages"))
            .header("x-api-key", ALICE)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "claude-test", "max_tokens": 400,
                "messages": [{"role": "user", "content": text}]}))
            .send()
            .expect("messages");
        assert_eq!(r.status().as_u16(), 429);
        assert!(header(&r, "retry-after").is_some());
        let v: Value = r.json().expect("json");
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    }
}

#[test]
fn a_total_budget_refuses_without_retry_after() {
    let env = Env::new();
    let gw = start(&config(
        &env.store(),
        &env.audit(),
        "{ usd = 0, period = \"total\" }",
    ));
    let base = format!("http://{}", gw.listen_addr());
    let r = chat(&base, ALICE, "mock-echo", "hi", 5, "zero");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(header(&r, "retry-after"), None);
    assert_eq!(
        header(&r, "x-sluice-budget-remaining-usd").as_deref(),
        Some("0.000000")
    );
    let v: Value = r.json().expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("does not reset"),
        "{v}"
    );
    // An unpriced model costs nothing, so it still fits.
    let r = chat(&base, ALICE, "mock-free", "hi", 5, "zero-free");
    assert_eq!(r.status().as_u16(), 200);
}

fn spawn_sluice(env: &Env, budget: &str) -> SluiceProcess {
    let body = config(&env.store(), &env.audit(), budget);
    SluiceProcess::run_in(env.dir.path(), "shutdown_grace_seconds = 5", &body)
}

#[test]
fn spend_survives_a_sigkill_after_one_second() {
    let env = Env::new();
    // $200 a day, $40 a request: spend until the budget refuses.
    let budget = "{ usd = 200, period = \"daily\" }";
    let mut p = spawn_sluice(&env, budget);
    let text = words(20);
    let mut ok = 0;
    for i in 0..10 {
        let r = chat(&p.base(), ALICE, "mock-echo", &text, 20, &format!("k-{i}"));
        let status = r.status().as_u16();
        let _ = r.text();
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        ok += 1;
    }
    assert!((1..10).contains(&ok), "{ok} requests before the refusal");
    // The contract: written behind by at most one second.
    std::thread::sleep(Duration::from_millis(1100));
    p.kill();

    let p = spawn_sluice(&env, budget);
    let u = usage(&p.base(), ALICE);
    let want = 40.0 * f64::from(ok);
    assert_eq!(spent(&u), want, "{u}");
    assert_eq!(u["budget"]["spent_usd"].as_f64(), Some(want), "{u}");
    let r = chat(&p.base(), ALICE, "mock-echo", &text, 20, "after-kill");
    assert_eq!(
        r.status().as_u16(),
        429,
        "the spent budget holds after the crash"
    );
}

fn make_key(base: &str, caller: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/v1/keys"))
        .bearer_auth(caller)
        .json(&body)
        .send()
        .expect("POST /v1/keys");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn keys_made_through_the_api_carry_budgets_that_only_narrow() {
    let env = Env::new();
    let gw = start(&config(&env.store(), &env.audit(), BIG));
    let base = format!("http://{}", gw.listen_addr());
    let text = words(20);
    let reserved = reservation(&base, &text, 20);
    assert!(reserved > 50.0, "{reserved}");

    // The caller's key has no budget: any budget may be set.
    let (status, made) = make_key(
        &base,
        ALICE,
        json!({"name": "capped", "budget": {"usd": 50, "period": "daily"}}),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["budget"], json!({"usd": 50.0, "period": "daily"}));
    let capped = made["key"].as_str().expect("the new key").to_string();
    let id = made["id"].as_str().expect("id").to_string();

    // $50 cannot hold the worst case of this request; the caller's own key can.
    let r = chat(&base, &capped, "mock-echo", &text, 20, "capped-1");
    assert_eq!(r.status().as_u16(), 429);
    let v: Value = r.json().expect("json");
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("key `{id}`")),
        "{v}"
    );
    let r = chat(&base, ALICE, "mock-echo", &text, 20, "uncapped");
    assert_eq!(r.status().as_u16(), 200);
    // A small request fits.
    let r = chat(&base, &capped, "mock-echo", "hi", 5, "capped-2");
    assert_eq!(r.status().as_u16(), 200);

    // A key made by the capped key may only narrow its budget, and inherits it by default.
    for (budget, ok) in [
        (json!({"usd": 60, "period": "daily"}), false),
        (json!({"usd": 10, "period": "weekly"}), false),
        (json!({"usd": 10.5, "period": "daily"}), true),
    ] {
        let (status, v) = make_key(&base, &capped, json!({"budget": budget}));
        if ok {
            assert_eq!(status, 201, "{v}");
        } else {
            assert_eq!(status, 403, "{v}");
            assert_eq!(v["error"]["code"], "permission_denied");
            assert_eq!(v["error"]["param"], "budget");
        }
    }
    let (status, v) = make_key(&base, &capped, json!({"name": "inherits"}));
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["budget"], json!({"usd": 50.0, "period": "daily"}));
    let (status, v) = make_key(
        &base,
        ALICE,
        json!({"budget": {"usd": -1, "period": "daily"}}),
    );
    assert_eq!(status, 400, "{v}");
}
