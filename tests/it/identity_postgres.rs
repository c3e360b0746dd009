//! Identity on two gateways sharing one PostgreSQL store, with tokens from a real OpenID
//! provider: a provider user recorded by one instance is known to the other, its store keys
//! work on both without a `[[users]]` entry, and disabling it on one instance stops its tokens
//! and keys on the other (SPEC §13: within 1 s; the time it took is reported, not asserted).

use std::time::{Duration, Instant};

use crate::support::{admin_url, client, free_port, start, url, MOCK};
use crate::support::{oidc, postgres};
use oidc::OidcProvider;
use postgres::PostgresServer;
use serde_json::{json, Value};

const ADMIN_ENV: &str = "SLUICE_IDENTITY_PG_ADMIN";
const ADMIN_TOKEN: &str = "identity-pg-admin-token";

fn config(store: &str, issuer: &str, audit: &str) -> String {
    format!(
        r#"admin_token_env = "{ADMIN_ENV}"
{MOCK}
[store]
url = "{store}"

[[orgs]]
name = "acme"

[[roles]]
name = "developer"
permissions = ["chat", "models:list", "keys:manage"]
models = ["mock-*"]

[identity]
issuer = "{issuer}"
client_id = "console"
audiences = ["sluice"]
[[identity.roles]]
group = "eng"
org = "acme"
role = "developer"

[audit]
path = "{audit}"

[[filters]]
type = "auth"
[[filters]]
type = "audit"
"#
    )
}

fn chat(gw: &sluice::Gateway, bearer: &str) -> u16 {
    client()
        .post(url(gw, "/v1/chat/completions"))
        .bearer_auth(bearer)
        .json(&json!({"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn admin(
    gw: &sluice::Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client()
        .request(method, admin_url(gw, path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().expect("admin request");
    let s = r.status().as_u16();
    (s, r.json().unwrap_or_default())
}

fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if f() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("not within 10 s: {what}");
}

#[test]
fn disabling_a_provider_user_reaches_every_instance_sharing_postgres() {
    std::env::set_var(ADMIN_ENV, ADMIN_TOKEN);
    let pg = PostgresServer::start();
    let idp = OidcProvider::start(free_port());
    let dir = tempfile::tempdir().expect("tmp");
    let audit = |n: &str| dir.path().join(n).display().to_string();
    let a = start(&config(&pg.url(), &idp.issuer, &audit("a.jsonl")));
    let b = start(&config(&pg.url(), &idp.issuer, &audit("b.jsonl")));

    let token = idp.client_token("svc-eng");
    assert_eq!(chat(&a, &token), 200);
    let user = "/admin/v1/users/svc-eng%40example.com";
    until(
        "the other instance's directory holds the provider user",
        || admin(&b, reqwest::Method::GET, user, None).1["source"] == "oidc",
    );
    let (_, seen) = admin(&b, reqwest::Method::GET, user, None);
    assert_eq!(seen["org"], "acme");
    assert_eq!(seen["role"], "developer");

    // A store key made with the token on `a` works on `b`: no [[users]] entry anywhere.
    let r = client()
        .post(url(&a, "/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "laptop"}))
        .send()
        .expect("POST /v1/keys");
    assert_eq!(r.status().as_u16(), 201);
    let made: Value = r.json().expect("key JSON");
    let key = made["key"].as_str().expect("key").to_string();
    assert!(
        made["expires"].as_i64().is_some(),
        "a provider user's key always expires: {made}"
    );
    until("the other instance accepts the new key", || {
        chat(&b, &key) == 200
    });
    assert_eq!(chat(&b, &token), 200);

    let (status, body) = admin(
        &a,
        reqwest::Method::PUT,
        user,
        Some(json!({"disabled": true})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(chat(&a, &token), 401, "at once where it was disabled");
    assert_eq!(chat(&a, &key), 401);
    let took = until(
        "the other instance refuses the user's token and key",
        || chat(&b, &token) == 401 && chat(&b, &key) == 401,
    );
    eprintln!("disabling reached the other instance after {took:?}");

    let (status, _) = admin(
        &b,
        reqwest::Method::PUT,
        user,
        Some(json!({"disabled": false})),
    );
    assert_eq!(status, 200);
    until("enabled again on the first instance", || {
        chat(&a, &token) == 200 && chat(&a, &key) == 200
    });
}
