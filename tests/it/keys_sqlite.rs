//! The key API on the default store, a real SQLite file: self-service, narrowing, expiry,
//! revocation, restarts, the admin API and its guards, the audit trail, `keys new --store`.

use std::path::Path;

use crate::support::{self, keys};
use crate::support::{admin_url, client, error_code, json_of, start, url};
use keys::{
    chat_status, config, create, eventually, new_key, revoke, ALICE, ALICE_NARROW, BOB, CAROL,
};
use serde_json::{json, Value};

fn sqlite(dir: &Path) -> (String, String) {
    (
        format!("sqlite://{}", dir.join("store/sluice.db").display()),
        dir.join("audit.jsonl").display().to_string(),
    )
}

fn list(gw: &sluice::Gateway, key: &str) -> Vec<Value> {
    let r = client()
        .get(url(gw, "/v1/keys"))
        .bearer_auth(key)
        .send()
        .expect("GET /v1/keys");
    assert_eq!(r.status().as_u16(), 200);
    json_of(r)["data"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_key_made_through_the_api_works_at_once_and_is_revoked_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let gw = start(&config(&store, &audit, None));

    let (status, made) = create(&gw, ALICE, json!({"name": "laptop", "expires_in_days": 90}));
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap_or_default().to_string();
    assert!(key.starts_with("sk-sluice-") && key.len() == 50, "{key}");
    assert!(key["sk-sluice-".len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric()));
    let id = made["id"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("key_"), "{id}");
    assert_eq!(
        (made["object"].as_str(), made["user"].as_str()),
        (Some("api_key"), Some("alice"))
    );
    let expires = made["expires"].as_i64().unwrap_or(0) - made["created"].as_i64().unwrap_or(0);
    assert_eq!(expires, 90 * 86_400);
    assert!(made.get("sha256").is_none());

    assert_eq!(chat_status(&gw, &key), 200);
    let mine = list(&gw, ALICE);
    let ids: Vec<&str> = mine.iter().filter_map(|k| k["id"].as_str()).collect();
    assert!(
        ids.contains(&"alice-key") && ids.contains(&"alice-narrow") && ids.contains(&id.as_str()),
        "{ids:?}"
    );
    assert!(!ids.contains(&"bob-key"));
    let cfg_key = mine
        .iter()
        .find(|k| k["id"] == "alice-key")
        .cloned()
        .unwrap_or_default();
    assert_eq!(cfg_key["source"], "config");
    let store_key = mine
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(store_key["source"], "store");
    assert!(store_key["last_used"].as_i64().is_some(), "{store_key}");
    let text = serde_json::to_string(&mine).unwrap_or_default();
    assert!(
        !text.contains("sk-sluice-")
            && !text.contains(&sluice::filters::auth::key_sha256_hex(&key))
    );

    // Bob cannot see or revoke alice's key; alice can.
    let r = revoke(&gw, BOB, &id);
    assert_eq!(error_code(r, 404), "not_found");
    let r = revoke(&gw, ALICE, &id);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(chat_status(&gw, &key), 401);
    let r = revoke(&gw, ALICE, &id);
    assert_eq!(error_code(r, 404), "not_found");
    let r = revoke(&gw, ALICE, "alice-key");
    assert_eq!(error_code(r, 409), "config_key");

    // Without keys:manage.
    let r = client()
        .get(url(&gw, "/v1/keys"))
        .bearer_auth(CAROL)
        .send()
        .expect("GET");
    assert_eq!(error_code(r, 403), "permission_denied");
    drop(gw);

    // Neither the store nor the audit trail ever holds the key.
    for f in ["store/sluice.db", "store/sluice.db-wal", "audit.jsonl"] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(&key), "{f} holds the key");
    }
    let audit = std::fs::read_to_string(&audit).unwrap_or_default();
    let changes: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| {
            r["key_id"] == id.as_str()
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/v1/keys"))
        })
        .collect();
    assert_eq!(changes.len(), 2, "a creation and a revocation: {changes:?}");
    assert!(changes
        .iter()
        .all(|r| r["outcome"] == "ok" && r["user"] == "alice"));
    let verify = sluice::filters::audit::verify(&[std::path::PathBuf::from(
        &dir.path().join("audit.jsonl"),
    )]);
    assert!(verify.is_ok(), "{verify}");
}

#[test]
fn keys_made_by_keys_only_narrow() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let gw = start(&config(&store, &audit, None));

    let refused = |key: &str, body: Value| {
        let (status, v) = create(&gw, key, body);
        assert_eq!(status, 403, "{v}");
        assert_eq!(v["error"]["code"], "permission_denied", "{v}");
        v["error"]["param"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(refused(ALICE, json!({"models": ["*"]})), "models");
    assert_eq!(refused(ALICE, json!({"models": ["gpt-4o"]})), "models");
    assert_eq!(
        refused(ALICE_NARROW, json!({"models": ["mock-*"]})),
        "models"
    );
    assert_eq!(
        refused(
            ALICE_NARROW,
            json!({"rate_limit": {"requests_per_minute": 101}})
        ),
        "rate_limit"
    );

    // Narrower is fine, and what is not given is inherited.
    let (status, v) = create(
        &gw,
        ALICE_NARROW,
        json!({"rate_limit": {"requests_per_minute": 2}}),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["models"], json!(["mock-echo"]));
    assert_eq!(v["rate_limit"]["requests_per_minute"], 2);
    let limited = v["key"].as_str().unwrap_or_default().to_string();
    // Its own bucket: two requests a minute.
    assert_eq!(chat_status(&gw, &limited), 200);
    assert_eq!(chat_status(&gw, &limited), 200);
    assert_eq!(chat_status(&gw, &limited), 429);

    // Bad input: the contract's 400s.
    let (status, v) = create(&gw, ALICE, json!({"name": "x", "admin": true}));
    assert_eq!(
        (
            status,
            v["error"]["code"].as_str(),
            v["error"]["param"].as_str()
        ),
        (400, Some("unknown_parameter"), Some("admin"))
    );
    let (status, v) = create(&gw, ALICE, json!({"expires_in_days": 0}));
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("expires_in_days"))
    );
    let (status, _) = create(
        &gw,
        ALICE,
        json!({"rate_limit": {"requests_per_minute": 0}}),
    );
    assert_eq!(status, 400);
    let r = client()
        .post(url(&gw, "/v1/keys"))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .expect("POST");
    assert_eq!(error_code(r, 400), "invalid_json");
}

#[test]
fn keys_survive_a_restart_and_revocations_too() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let cfg = config(&store, &audit, None);
    let gw = start(&cfg);
    let (kept_id, kept) = new_key(&gw, ALICE);
    let (gone_id, gone) = new_key(&gw, BOB);
    assert_eq!(chat_status(&gw, &kept), 200);
    let r = revoke(&gw, BOB, &gone_id);
    assert_eq!(r.status().as_u16(), 200);
    drop(gw);

    let gw = start(&cfg);
    assert_eq!(chat_status(&gw, &kept), 200);
    assert_eq!(chat_status(&gw, &gone), 401);
    let again = list(&gw, ALICE);
    let k = again
        .iter()
        .find(|k| k["id"] == kept_id.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(
        k["last_used"].as_i64().is_some(),
        "last use recorded across the restart: {k}"
    );
}

#[test]
fn the_admin_api_manages_any_users_keys_behind_its_token_and_origin_checks() {
    let env = "SLUICE_TEST_ADMIN_TOKEN_KEYS_SQLITE";
    std::env::set_var(env, "adm1n-token");
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let gw = start(&config(&store, &audit, Some(env)));
    let admin = |path: &str| admin_url(&gw, path);

    let r = client().get(admin("/admin/v1/keys")).send().expect("GET");
    assert_eq!(error_code(r, 401), "missing_api_key");
    let r = client()
        .get(admin("/admin/v1/keys"))
        .bearer_auth("wrong")
        .send()
        .expect("GET");
    assert_eq!(error_code(r, 401), "invalid_api_key");
    let r = client()
        .post(admin("/admin/v1/keys"))
        .bearer_auth("adm1n-token")
        .header("origin", "http://evil.example")
        .json(&json!({"user": "bob"}))
        .send()
        .expect("POST");
    assert_eq!(error_code(r, 403), "permission_denied");
    let r = client()
        .post(admin("/admin/reload"))
        .bearer_auth("adm1n-token")
        .header("origin", "http://evil.example")
        .send()
        .expect("POST");
    assert_eq!(error_code(r, 403), "permission_denied");
    let r = client()
        .post(admin("/admin/reload"))
        .bearer_auth("adm1n-token")
        .header("host", "evil.example")
        .send()
        .expect("POST");
    assert_eq!(error_code(r, 403), "permission_denied");
    let r = client().post(admin("/admin/reload")).send().expect("POST");
    assert_eq!(error_code(r, 401), "missing_api_key");
    let own_origin = format!("http://{}", gw.admin_addr());
    let r = client()
        .post(admin("/admin/reload"))
        .bearer_auth("adm1n-token")
        .header("origin", own_origin)
        .send()
        .expect("POST");
    // Past the guards: this gateway was built from a value, so the reload itself is rejected.
    assert_eq!(json_of(r)["status"], "rejected");

    let authed = |b: reqwest::blocking::RequestBuilder| {
        b.bearer_auth("adm1n-token").send().expect("admin request")
    };
    let r = authed(
        client()
            .post(admin("/admin/v1/keys"))
            .json(&json!({"user": "bob", "id": "bob-ci", "name": "ci", "models": ["mock-echo"]})),
    );
    assert_eq!(r.status().as_u16(), 201);
    let made = json_of(r);
    let key = made["key"].as_str().unwrap_or_default().to_string();
    assert_eq!(chat_status(&gw, &key), 200);
    let r = authed(
        client()
            .post(admin("/admin/v1/keys"))
            .json(&json!({"user": "nobody"})),
    );
    assert_eq!(error_code(r, 400), "unknown_user");
    let r = authed(
        client()
            .post(admin("/admin/v1/keys"))
            .json(&json!({"user": "bob", "id": "bob-ci"})),
    );
    assert_eq!(error_code(r, 409), "key_exists");

    let r = authed(
        client()
            .put(admin("/admin/v1/keys/bob-ci"))
            .json(&json!({"disabled": true, "name": "ci-off"})),
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(json_of(r)["name"], "ci-off");
    assert_eq!(chat_status(&gw, &key), 401);
    let r = authed(
        client()
            .put(admin("/admin/v1/keys/bob-ci"))
            .json(&json!({"disabled": false})),
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(chat_status(&gw, &key), 200);
    // An expired key gets 401.
    let past = sluice::store::now_secs() - 1;
    let r = authed(
        client()
            .put(admin("/admin/v1/keys/bob-ci"))
            .json(&json!({"expires": past})),
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(chat_status(&gw, &key), 401);
    let r = authed(
        client()
            .put(admin("/admin/v1/keys/bob-ci"))
            .json(&json!({"expires": null, "colour": "red"})),
    );
    assert_eq!(error_code(r, 400), "unknown_parameter");
    let r = authed(
        client()
            .put(admin("/admin/v1/keys/bob-ci"))
            .json(&json!({"expires": null})),
    );
    assert_eq!(json_of(r)["expires"], Value::Null);
    assert_eq!(chat_status(&gw, &key), 200);

    let r = authed(client().get(admin("/admin/v1/keys?user=bob")));
    let data = json_of(r)["data"].as_array().cloned().unwrap_or_default();
    assert!(data.iter().any(|k| k["id"] == "bob-ci") && data.iter().all(|k| k["user"] == "bob"));
    let r = authed(client().get(admin("/admin/v1/keys/bob-ci")));
    assert_eq!(json_of(r)["models"], json!(["mock-echo"]));
    let r = authed(client().delete(admin("/admin/v1/keys/bob-ci")));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(chat_status(&gw, &key), 401);
    let r = authed(client().get(admin("/admin/v1/keys/bob-ci")));
    assert_eq!(error_code(r, 404), "not_found");
    drop(gw);

    let audit = std::fs::read_to_string(&audit).unwrap_or_default();
    let changes = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| {
            r["key_id"] == "bob-ci"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/admin/v1/keys"))
        })
        .count();
    assert_eq!(changes, 6, "create, four updates, revoke");
    assert!(!audit.contains(&key) && !audit.contains("adm1n-token"));
}

#[test]
fn without_an_admin_token_the_admin_key_api_is_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let gw = start(&config(&store, &audit, None));
    let r = client()
        .get(admin_url(&gw, "/admin/v1/keys"))
        .bearer_auth("anything")
        .send()
        .expect("GET");
    assert_eq!(error_code(r, 403), "permission_denied");
    // Reload stays as it was without a token, behind the origin check.
    let r = client()
        .post(admin_url(&gw, "/admin/reload"))
        .send()
        .expect("POST");
    // Past the guards (the reload itself is rejected: this gateway was built from a value).
    assert_eq!(json_of(r)["status"], "rejected");
}

#[test]
fn keys_new_store_bootstraps_a_key_running_gateways_pick_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, audit) = sqlite(dir.path());
    let cfg = config(&store, &audit, None);
    let gw = start(&cfg);
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, format!("{}{cfg}", support::server_section())).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "keys",
            "new",
            "--user",
            "carol",
            "--id",
            "carol-boot",
            "--store",
            "-c",
        ])
        .arg(&file)
        .output()
        .expect("sluice keys new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .lines()
        .find(|l| l.starts_with("sk-sluice-"))
        .unwrap_or_default()
        .to_string();
    assert_eq!(key.len(), 50, "{stdout}");
    eventually("the running gateway sees the bootstrapped key", || {
        chat_status(&gw, &key) == 200
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "new", "--user", "nobody", "--store", "-c"])
        .arg(&file)
        .output()
        .expect("sluice keys new");
    assert!(!out.status.success());
    // A misspelled table is named, not read as "no store here" (the key would have gone to
    // the default store, where no gateway looks).
    let typo = dir.path().join("typo.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    std::fs::write(&typo, text.replace("[store]", "[stor]")).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "new", "--user", "carol", "--store", "-c"])
        .arg(&typo)
        .current_dir(dir.path())
        .output()
        .expect("sluice keys new");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stor: unknown key"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "no default store was made"
    );
}
