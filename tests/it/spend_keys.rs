//! Budgets of keys made at run time (SPEC §15, §12): a key made by a key is held to every
//! ancestor's budget, so minting keys never multiplies a budget; the admin key API sets and
//! changes a store key's `budget`, refusing bad ones with the field's path.

use crate::support::{admin_url, client, start};
use crate::support::{postgres, spend};
use serde_json::{json, Value};
use spend::{chat, config, header, reservation, spent, usage, words, Env, ALICE};

const BIG: &str = "{ usd = 1000000, period = \"monthly\" }";

fn make_key(base: &str, caller: &str, body: Value) -> Value {
    let r = client()
        .post(format!("{base}/v1/keys"))
        .bearer_auth(caller)
        .json(&body)
        .send()
        .expect("POST /v1/keys");
    assert_eq!(r.status().as_u16(), 201);
    r.json().expect("key JSON")
}

#[test]
fn three_children_together_never_overspend_their_parents_budget() {
    let env = Env::new();
    let gw = start(&config(&env.store(), &env.audit(), BIG));
    let base = format!("http://{}", gw.listen_addr());
    // 20 prompt words echoed back: each request really costs $40.
    let text = words(20);
    let reserved = reservation(&base, &text, 20);
    assert!(reserved >= 40.0, "{reserved}");

    // The parent may spend $200 a day; each child inherits a $200 budget of its own, so
    // without the parent's budget the three together could spend $600.
    let parent = make_key(
        &base,
        ALICE,
        json!({"name": "parent", "budget": {"usd": 200, "period": "daily"}}),
    );
    let parent_key = parent["key"].as_str().expect("key").to_string();
    let parent_id = parent["id"].as_str().expect("id").to_string();
    let children: Vec<String> = (0..3)
        .map(|i| {
            let c = make_key(&base, &parent_key, json!({"name": format!("child-{i}")}));
            assert_eq!(c["budget"], json!({"usd": 200.0, "period": "daily"}), "{c}");
            c["key"].as_str().expect("key").to_string()
        })
        .collect();

    let answers: Vec<(u16, Option<String>, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..30)
            .map(|i| {
                let (base, text, key) = (&base, &text, &children[i % 3]);
                s.spawn(move || {
                    let r = chat(base, key, "mock-echo", text, 20, &format!("k-{i}"));
                    let status = r.status().as_u16();
                    let remaining = header(&r, "x-sluice-budget-remaining-usd");
                    (status, remaining, r.json().unwrap_or(Value::Null))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(ok + refused.len(), 30, "only 200 and 429: {answers:?}");
    assert!(ok >= 1, "the parent's budget holds a few requests");
    eprintln!(
        "reservation ${reserved} per request; {ok} admitted, {} refused",
        refused.len()
    );
    // Some refusals name the parent: the children's own budgets were not what ran out.
    assert!(
        refused.iter().any(|(_, _, v)| v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("key `{parent_id}`"))),
        "{refused:?}"
    );
    for (_, _, v) in &refused {
        assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    }
    // Every audit record is in (written after its spend is settled).
    for i in 0..30 {
        let _ = env.record(&format!("k-{i}"));
    }
    let total = spent(&usage(&base, ALICE));
    assert_eq!(total, 40.0 * ok as f64);
    assert!(
        total <= 200.0,
        "the children spent ${total} of the parent's $200"
    );

    // The parent's own requests meet the same spent budget.
    if total + reserved > 200.0 {
        let r = chat(&base, &parent_key, "mock-echo", &text, 20, "parent-after");
        assert_eq!(r.status().as_u16(), 429);
    }
}

fn admin(gw: &sluice::Gateway, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .request(method, admin_url(gw, path))
        .bearer_auth("spend-adm1n")
        .json(&body)
        .send()
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn the_admin_key_api_sets_changes_and_validates_budgets() {
    let env = Env::new();
    admin_budgets(&env, &env.store());
}

#[test]
fn the_admin_key_api_changes_budgets_on_postgres_too() {
    let pg = postgres::PostgresServer::start();
    let env = Env::new();
    admin_budgets(&env, &pg.url());
}

fn admin_budgets(env: &Env, store: &str) {
    let token_env = "SLUICE_TEST_ADMIN_TOKEN_SPEND_KEYS";
    std::env::set_var(token_env, "spend-adm1n");
    let gw = start(&format!(
        "admin_token_env = \"{token_env}\"\n{}",
        config(store, &env.audit(), BIG)
    ));
    let base = format!("http://{}", gw.listen_addr());
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;

    // Refusals name the field path.
    for (budget, param) in [
        (json!({"usd": -5, "period": "daily"}), "budget.usd"),
        (json!({"usd": "5", "period": "daily"}), "budget.usd"),
        (json!({"usd": 5, "period": "yearly"}), "budget.period"),
        (json!({"usd": 5}), "budget.period"),
        (json!({"usd": 5, "period": "daily", "cap": 1}), "budget.cap"),
        (json!("5 dollars"), "budget"),
    ] {
        let (status, v) = admin(
            &gw,
            post.clone(),
            "/admin/v1/keys",
            json!({"user": "alice", "budget": budget}),
        );
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap_or("").contains(param),
            "{v}"
        );
    }

    // A key made with a $1 budget cannot afford a $40 request; a small one fits.
    let (status, made) = admin(
        &gw,
        post,
        "/admin/v1/keys",
        json!({"user": "alice", "budget": {"usd": 1, "period": "weekly"}}),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["budget"], json!({"usd": 1.0, "period": "weekly"}));
    let key = made["key"].as_str().expect("key").to_string();
    let id = made["id"].as_str().expect("id").to_string();
    let text = words(20);
    let r = chat(&base, &key, "mock-echo", &text, 20, "admin-capped");
    assert_eq!(r.status().as_u16(), 429);
    let v: Value = r.json().expect("json");
    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");

    // PUT raises it (at once on this instance), a bad one is refused and changes nothing,
    // `null` removes it.
    let path = format!("/admin/v1/keys/{id}");
    let (status, v) = admin(&gw, put.clone(), &path, json!({"budget": {"usd": 0.5}}));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "budget.period");
    let (status, v) = admin(
        &gw,
        put.clone(),
        &path,
        json!({"budget": {"usd": 1000, "period": "monthly"}}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["budget"], json!({"usd": 1000.0, "period": "monthly"}));
    let r = chat(&base, &key, "mock-echo", &text, 20, "admin-raised");
    assert_eq!(r.status().as_u16(), 200);
    assert!(header(&r, "x-sluice-budget-remaining-usd").is_some());
    let (status, v) = admin(&gw, put.clone(), &path, json!({"name": "renamed"}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["budget"],
        json!({"usd": 1000.0, "period": "monthly"}),
        "absent stays"
    );
    let (status, v) = admin(&gw, put, &path, json!({"budget": null}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["budget"], Value::Null);
    let (status, v) = admin(&gw, reqwest::Method::GET, &path, Value::Null);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["budget"], Value::Null);
}
