//! A hostile tenant against the key API (SPEC §12, issue 23 item 3), on a real gateway with a
//! real SQLite store: minting keys must not multiply a limit, a key made from a key dies with
//! it and never outlives it, a user holds a bounded number of keys, and a key's own `models`
//! binds agent runs too. Each of these failed before the fix.

use std::path::Path;
use std::time::Instant;

use crate::support::{admin_url, client, error_code, json_of, start, url};
use crate::support::{keys, postgres, redis_server};
use keys::{chat_status, config, create, eventually, revoke, ALICE, ALICE_NARROW};
use serde_json::{json, Value};

fn sqlite(dir: &Path) -> (String, String) {
    (
        format!("sqlite://{}", dir.join("store/sluice.db").display()),
        dir.join("audit.jsonl").display().to_string(),
    )
}

/// A key made by `key` with `body`: its id and the key.
fn mint(gw: &sluice::Gateway, key: &str, body: Value) -> (String, String) {
    let (status, v) = create(gw, key, body);
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap_or_default().to_string(),
        v["key"].as_str().unwrap_or_default().to_string(),
    )
}

fn listed_ids(gw: &sluice::Gateway, key: &str) -> Vec<String> {
    let r = client()
        .get(url(gw, "/v1/keys"))
        .bearer_auth(key)
        .send()
        .expect("GET /v1/keys");
    assert_eq!(r.status().as_u16(), 200);
    json_of(r)["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn minting_keys_never_multiplies_a_limit() {
    minting_keys_never_multiplies_a_limit_with("");
}

#[test]
fn minting_keys_never_multiplies_a_limit_kept_in_redis() {
    let redis = redis_server::RedisServer::start();
    minting_keys_never_multiplies_a_limit_with(&format!(
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 5000\n",
        redis.url()
    ));
}

fn minting_keys_never_multiplies_a_limit_with(rate_limit_section: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    // alice-narrow: 6 requests a minute (one every 10 s).
    let cfg = config(&store, &audit, None).replace(
        "rate_limit = { requests_per_minute = 100 }",
        "rate_limit = { requests_per_minute = 6 }",
    ) + rate_limit_section;
    let gw = start(&cfg);
    let started = Instant::now();
    // Three children, each inheriting 6 a minute (the three POSTs are requests of the parent).
    let children: Vec<String> = (0..3)
        .map(|i| mint(&gw, ALICE_NARROW, json!({"name": format!("child-{i}")})).1)
        .collect();
    let mut ok = 0;
    let mut limited = Vec::new();
    for i in 0..20 {
        let key = if i % 4 == 3 {
            ALICE_NARROW
        } else {
            &children[i % 4]
        };
        let r = client()
            .post(url(&gw, "/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .expect("chat");
        match r.status().as_u16() {
            200 => ok += 1,
            429 => limited.push(json_of(r)),
            s => panic!("unexpected status {s}"),
        }
    }
    // What the parent's bucket allows: 6 at once, less the three POSTs, plus what refilled
    // while the test ran (one per 10 s).
    let refilled = started.elapsed().as_secs() / 10 + 1;
    assert!(
        ok <= 3 + refilled,
        "{ok} of 20 requests got through a 6/min parent with 3 minted children"
    );
    assert!(ok >= 1, "the parent's remaining requests were refused");
    // A child's refusal names the parent's bucket, the one that is empty.
    assert!(
        limited.iter().any(|v| v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`alice-narrow`"))),
        "{limited:?}"
    );
    assert!(limited
        .iter()
        .all(|v| v["error"]["code"] == "rate_limit_exceeded"));
}

#[test]
fn a_key_dies_with_the_key_that_made_it_and_never_outlives_it() {
    let env = "SLUICE_HOSTILE_KEYS_ADMIN";
    std::env::set_var(env, "hostile-keys-admin");
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let gw = start(&config(&store, &audit, Some(env)));
    let admin_put = |id: &str, body: Value| {
        let r = client()
            .put(admin_url(&gw, &format!("/admin/v1/keys/{id}")))
            .bearer_auth("hostile-keys-admin")
            .json(&body)
            .send()
            .expect("PUT");
        assert_eq!(r.status().as_u16(), 200);
    };

    // alice-key → parent → child → grandchild.
    let (parent_id, parent) = mint(&gw, ALICE, json!({"name": "parent"}));
    let (child_id, child) = mint(&gw, &parent, json!({"name": "child"}));
    let (grand_id, grand) = mint(&gw, &child, json!({"name": "grandchild"}));
    for k in [&parent, &child, &grand] {
        assert_eq!(chat_status(&gw, k), 200);
    }

    // Disabling the parent disables what it made; enabling it restores them.
    admin_put(&parent_id, json!({"disabled": true}));
    assert_eq!(chat_status(&gw, &child), 401);
    assert_eq!(chat_status(&gw, &grand), 401);
    admin_put(&parent_id, json!({"disabled": false}));
    assert_eq!(chat_status(&gw, &grand), 200);

    // The parent's expiry binds its descendants, even one moved earlier after they were made.
    admin_put(
        &parent_id,
        json!({"expires": sluice::store::now_secs() - 1}),
    );
    assert_eq!(chat_status(&gw, &parent), 401);
    assert_eq!(chat_status(&gw, &child), 401);
    assert_eq!(chat_status(&gw, &grand), 401);
    admin_put(&parent_id, json!({"expires": null}));
    assert_eq!(chat_status(&gw, &grand), 200);

    // Revoking the child revokes the grandchild, not the parent.
    let r = revoke(&gw, ALICE, &child_id);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(chat_status(&gw, &child), 401);
    assert_eq!(chat_status(&gw, &grand), 401);
    assert_eq!(chat_status(&gw, &parent), 200);
    let ids = listed_ids(&gw, ALICE);
    assert!(ids.contains(&parent_id), "{ids:?}");
    assert!(
        !ids.contains(&child_id) && !ids.contains(&grand_id),
        "{ids:?}"
    );
    let r = revoke(&gw, ALICE, &grand_id);
    assert_eq!(error_code(r, 404), "not_found");
    drop(gw);

    // After a restart on the same store, the revoked stay revoked.
    let gw = start(&config(&store, &audit, Some(env)));
    assert_eq!(chat_status(&gw, &grand), 401);
    assert_eq!(chat_status(&gw, &parent), 200);
    drop(gw);
    // Each revocation is on the audit trail.
    let trail = std::fs::read_to_string(&audit).unwrap_or_default();
    let revoked: Vec<Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["method"] == "DELETE" && r["key_id"] == grand_id.as_str())
        .collect();
    assert!(
        !revoked.is_empty(),
        "no record of the grandchild's revocation"
    );
}

#[test]
fn a_user_holds_at_most_max_keys_per_user() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    // alice already holds two config keys.
    let cfg = config(&store, &audit, None).replace(
        "poll_interval_ms = 100",
        "poll_interval_ms = 100\nmax_keys_per_user = 4",
    );
    let gw = start(&cfg);
    let (first, _) = mint(&gw, ALICE, json!({"name": "a"}));
    mint(&gw, ALICE, json!({"name": "b"}));
    let (status, v) = create(&gw, ALICE, json!({"name": "c"}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("key_limit_reached")),
        "{v}"
    );
    // A key made by a key counts for its user too.
    let (status, v) = create(&gw, ALICE_NARROW, json!({"name": "d"}));
    assert_eq!(status, 409, "{v}");
    // Other users are not affected; a revoked key frees its place.
    let (status, _) = create(&gw, keys::BOB, json!({"name": "bob's"}));
    assert_eq!(status, 201);
    assert_eq!(revoke(&gw, ALICE, &first).status().as_u16(), 200);
    mint(&gw, ALICE, json!({"name": "c"}));
}

#[test]
fn a_keys_own_models_bind_agent_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let cfg = format!(
        "{}\n[[agents]]\nid = \"other-scan\"\nmodel = \"mock-other\"\ninstructions = \"Summarise.\"\n",
        config(&store, &audit, None)
    );
    let gw = start(&cfg);
    let run = |key: &str, agent: &str| {
        client()
            .post(url(&gw, &format!("/v1/agents/{agent}/run")))
            .bearer_auth(key)
            .json(&json!({"input": "hello"}))
            .send()
            .expect("agent run")
    };
    // alice-narrow may use mock-echo only.
    assert_eq!(run(ALICE_NARROW, "daily-scan").status().as_u16(), 200);
    assert_eq!(
        error_code(run(ALICE_NARROW, "other-scan"), 403),
        "model_not_allowed"
    );
    let r = client()
        .post(url(&gw, "/v1/agents/other-scan/run"))
        .bearer_auth(ALICE_NARROW)
        .json(&json!({"input": "hello", "async": true}))
        .send()
        .expect("async agent run");
    assert_eq!(error_code(r, 403), "model_not_allowed");
    // A key made from it inherits the narrowing; the user's unnarrowed key runs both.
    let (_, child) = mint(&gw, ALICE_NARROW, json!({"name": "child"}));
    assert_eq!(
        error_code(run(&child, "other-scan"), 403),
        "model_not_allowed"
    );
    assert_eq!(run(ALICE, "other-scan").status().as_u16(), 200);
}

/// Runs SQL statements on a SQLite store file (no gateway may have it open).
fn sqlite_exec(db: &Path, statements: &[&str]) -> Vec<i64> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("sqlite://{}", db.display());
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .expect("open the store");
        for s in statements {
            sqlx::query(s).execute(&pool).await.expect(s);
        }
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM sluice_migrations ORDER BY version")
                .fetch_all(&pool)
                .await
                .expect("versions");
        pool.close().await;
        versions
    })
}

#[test]
fn a_store_from_before_key_ancestry_is_migrated_and_its_keys_keep_working() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let gw = start(&config(&store, &audit, None));
    let (_, old) = mint(&gw, ALICE, json!({"name": "made before"}));
    drop(gw);
    // Back to the schema of version 2: no parent column, migration 3 never applied.
    let db = dir.path().join("store/sluice.db");
    let versions = sqlite_exec(
        &db,
        &[
            "DROP INDEX api_keys_parent",
            "ALTER TABLE api_keys DROP COLUMN parent",
            "DELETE FROM sluice_migrations WHERE version = 3",
        ],
    );
    // Every other migration stays applied: the runner must add the missing one alone.
    assert!(
        versions.starts_with(&[1, 2]) && !versions.contains(&3),
        "{versions:?}"
    );

    let gw = start(&config(&store, &audit, None));
    assert_eq!(chat_status(&gw, &old), 200);
    let (_, child) = mint(&gw, &old, json!({"name": "made after"}));
    assert_eq!(chat_status(&gw, &child), 200);
    drop(gw);
    assert!(sqlite_exec(&db, &[]).contains(&3));
}

#[test]
fn on_postgresql_a_revocation_takes_the_keys_made_from_it_on_every_instance() {
    let pg = postgres::PostgresServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let audit = |n: &str| dir.path().join(n).display().to_string();
    let cfg = |a: &str| {
        config(&pg.url(), &audit(a), None).replace(
            "poll_interval_ms = 100",
            "poll_interval_ms = 100\nmax_keys_per_user = 5",
        )
    };
    let a = start(&cfg("a.jsonl"));
    let b = start(&cfg("b.jsonl"));
    let (parent_id, parent) = mint(&a, ALICE, json!({"name": "parent"}));
    let (_, child) = mint(&a, &parent, json!({"name": "child"}));
    let (_, grand) = mint(&a, &child, json!({"name": "grandchild"}));
    eventually("the other instance accepts the grandchild", || {
        chat_status(&b, &grand) == 200
    });
    // Two config keys and three store keys: the user is full, on either instance.
    let (status, v) = create(&b, ALICE, json!({"name": "one too many"}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("key_limit_reached")),
        "{v}"
    );

    assert_eq!(revoke(&b, ALICE, &parent_id).status().as_u16(), 200);
    for k in [&parent, &child, &grand] {
        assert_eq!(chat_status(&b, k), 401, "at once where it was revoked");
    }
    eventually("the other instance refuses the whole line", || {
        [&parent, &child, &grand]
            .iter()
            .all(|k| chat_status(&a, k) == 401)
    });
    // Their places are free again.
    mint(&a, ALICE, json!({"name": "after"}));
}
