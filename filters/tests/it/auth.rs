//! The `auth` filter through the filter API: every row of issue 3 that lives in the filter.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;
use sluice_filters::api::GOVERNED;
use sluice_filters::audit::AuditSettings;
use sluice_filters::auth::{self, AuthFilter};
use sluice_filters::dlp::DlpSettings;
use sluice_filters::policy::{KeyConfig, OrgConfig, RoleConfig, UserConfig};
use sluice_filters::ratelimit::RateLimitSettings;
use sluice_filters::{
    Cx, Filter, JsonBody, Outcome, Policy, Request, RequestHead, Route, Sections, Shared, Verdict,
};

/// The governed routes these tests call.
const CHAT: Route = Route::Api(&sluice_filters::api::chat::ROUTE);
const EMBEDDINGS: Route = Route::Api(&sluice_filters::api::embeddings::ROUTE);

// ---------------------------------------------------------------------------------------------
// Fixture: a config as an operator writes it, keys added by hash.

const POLICY_TOML: &str = r#"
[[orgs]]
name = "acme"

[[roles]]
name = "analyst"
permissions = ["chat", "models:list", "agents:run"]
models = ["mock-*", "gpt-4o-mini"]
agents = ["daily-*"]

[[roles]]
name = "admin"
permissions = ["chat", "models:list", "agents:run", "embeddings", "passthrough"]
models = ["*"]
agents = ["*"]

[[users]]
name = "alice"
org = "acme"
role = "analyst"

[[users]]
name = "root"
org = "acme"
role = "admin"
"#;

const ALICE_KEY: &str = "sk-sluice-AliceAliceAliceAliceAliceAliceAlice0";
const NARROW_KEY: &str = "sk-sluice-NarrowNarrowNarrowNarrowNarrowNarrow";
const WIDE_KEY: &str = "sk-sluice-WideWideWideWideWideWideWideWideWid";
const DISABLED_KEY: &str = "sk-sluice-DisabledDisabledDisabledDisabledDis";
const ROOT_KEY: &str = "sk-sluice-RootRootRootRootRootRootRootRootRoo";

#[derive(Deserialize, Default)]
struct Config {
    #[serde(default)]
    orgs: Vec<OrgConfig>,
    #[serde(default)]
    roles: Vec<RoleConfig>,
    #[serde(default)]
    users: Vec<UserConfig>,
    #[serde(default)]
    keys: Vec<KeyConfig>,
    #[serde(skip)]
    rate_limit: RateLimitSettings,
    #[serde(skip)]
    dlp: DlpSettings,
    #[serde(skip)]
    audit: AuditSettings,
    #[serde(skip)]
    models: Vec<String>,
    #[serde(skip)]
    agents: Vec<String>,
}

impl Config {
    fn parse(text: &str) -> Config {
        let mut c: Config = toml::from_str(text).expect("fixture config parses");
        c.models = vec![
            "mock-echo".into(),
            "mock-other".into(),
            "gpt-4o-mini".into(),
        ];
        c.agents = vec!["daily-scan".into()];
        c
    }

    /// The fixture: alice (analyst) with a plain, a narrowing, a widening and a disabled key,
    /// and root (admin) with one key.
    fn standard() -> Config {
        let mut c = Config::parse(POLICY_TOML);
        c.add_key("alice-laptop", "alice", ALICE_KEY, None, false);
        c.add_key(
            "alice-narrow",
            "alice",
            NARROW_KEY,
            Some(&["mock-echo"]),
            false,
        );
        c.add_key("alice-wide", "alice", WIDE_KEY, Some(&["*"]), false);
        c.add_key("alice-old", "alice", DISABLED_KEY, None, true);
        c.add_key("root-ci", "root", ROOT_KEY, None, false);
        c
    }

    fn add_key(
        &mut self,
        id: &str,
        user: &str,
        key: &str,
        models: Option<&[&str]>,
        disabled: bool,
    ) {
        self.keys.push(KeyConfig {
            id: id.into(),
            user: user.into(),
            sha256: auth::key_sha256_hex(key),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            rate_limit: None,
            disabled,
            mcp: None,
            budget: None,
        });
    }

    fn policy(&self) -> Policy<'_> {
        Policy {
            orgs: &self.orgs,
            roles: &self.roles,
            users: &self.users,
            keys: &self.keys,
            sections: Sections::new()
                .with(&self.rate_limit)
                .with(&self.dlp)
                .with(&self.audit),
            models: &self.models,
            agents: &self.agents,
            prices: sluice_filters::spend::no_prices(),
        }
    }

    fn build(&self, shared: &Shared) -> Arc<dyn Filter> {
        auth::build(&self.policy(), &toml::Table::new(), "filters[0]", shared)
            .unwrap_or_else(|e| panic!("auth builds: {e}"))
    }

    fn build_err(&self, options: &toml::Table) -> Vec<String> {
        let shared = Shared::new(prometheus::Registry::new());
        match auth::build(&self.policy(), options, "filters[0]", &shared) {
            Ok(_) => panic!("expected a build error"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }
}

fn shared() -> Shared {
    Shared::new(prometheus::Registry::new())
}

// ---------------------------------------------------------------------------------------------
// Driving the filter.

fn cx() -> Cx {
    Cx::new("req-1".into(), Method::POST, "/v1/chat/completions".into())
}

fn bearer(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
    );
    h
}

async fn head(filter: &dyn Filter, headers: &HeaderMap) -> (Verdict, Cx) {
    let mut cx = cx();
    let head = RequestHead {
        method: &Method::POST,
        path: "/v1/chat/completions",
        headers,
    };
    let v = filter.on_request_head(&head, &mut cx).await;
    (v, cx)
}

/// Authenticates `key`, then runs `on_request` for `route` with `model` and `agent`.
async fn call(
    filter: &dyn Filter,
    key: &str,
    route: Route,
    model: Option<&str>,
    agent: Option<&str>,
) -> Verdict {
    let headers = bearer(key);
    let (v, mut cx) = head(filter, &headers).await;
    assert!(matches!(v, Verdict::Continue), "key authenticates");
    cx.route = route;
    cx.model = model.map(str::to_string);
    cx.agent_id = agent.map(str::to_string);
    let mut body = JsonBody::parsed(Bytes::from_static(b"{}"), serde_json::json!({}));
    let mut req = Request {
        method: &Method::POST,
        path: "/v1/x",
        headers: &headers,
        body: &mut body,
    };
    filter.on_request(&mut req, &mut cx).await
}

#[derive(Debug)]
struct Err {
    status: u16,
    kind: String,
    code: String,
    message: String,
    body: String,
    outcome: Outcome,
}

fn refused(v: Verdict) -> Err {
    let Verdict::Respond(reply) = v else {
        panic!("expected a refusal, got Continue")
    };
    let body = String::from_utf8(reply.body.to_vec()).expect("utf-8 body");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    let e = &json["error"];
    assert!(e["param"].is_null());
    assert_eq!(reply.content_type, "application/json");
    assert_eq!(reply.code, e["code"].as_str());
    Err {
        status: reply.status.as_u16(),
        kind: e["type"].as_str().unwrap_or_default().into(),
        code: e["code"].as_str().unwrap_or_default().into(),
        message: e["message"].as_str().unwrap_or_default().into(),
        body,
        outcome: reply.outcome,
    }
}

fn allowed(v: &Verdict) -> bool {
    matches!(v, Verdict::Continue)
}

// ---------------------------------------------------------------------------------------------
// Row 1: keys resolved by SHA-256; missing → 401 missing_api_key; the rest → 401 invalid_api_key.

#[tokio::test]
async fn a_configured_key_resolves_to_its_identity() {
    let filter = Config::standard().build(&shared());
    let (v, cx) = head(&*filter, &bearer(ALICE_KEY)).await;
    assert!(allowed(&v));
    let id = cx.identity.expect("identity set");
    assert_eq!(&*id.key_id, "alice-laptop");
    assert_eq!(&*id.user, "alice");
    assert_eq!(&*id.org, "acme");
    assert_eq!(&*id.role, "analyst");
    assert_eq!(id.grants.models, ["mock-*", "gpt-4o-mini"]);
    assert_eq!(id.grants.agents, ["daily-*"]);
    assert!(id.grants.key_models.is_none());
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let filter = Config::standard().build(&shared());
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let mut h = HeaderMap::new();
        let value = format!("{scheme} {ALICE_KEY}");
        h.insert(
            "authorization",
            HeaderValue::from_str(&value).expect("header"),
        );
        let (v, cx) = head(&*filter, &h).await;
        assert!(allowed(&v), "{scheme}");
        assert!(cx.identity.is_some());
    }
}

#[tokio::test]
async fn uppercase_hex_in_the_config_works() {
    let mut c = Config::standard();
    c.keys[0].sha256 = c.keys[0].sha256.to_ascii_uppercase();
    let filter = c.build(&shared());
    assert!(allowed(&head(&*filter, &bearer(ALICE_KEY)).await.0));
}

#[tokio::test]
async fn no_key_is_401_missing_api_key() {
    let filter = Config::standard().build(&shared());
    let mut empty_bearer = HeaderMap::new();
    empty_bearer.insert("authorization", HeaderValue::from_static("Bearer "));
    for headers in [HeaderMap::new(), empty_bearer] {
        let (v, cx) = head(&*filter, &headers).await;
        let e = refused(v);
        assert_eq!(e.status, 401);
        assert_eq!(e.kind, "authentication_error");
        assert_eq!(e.code, "missing_api_key");
        assert_eq!(e.outcome, Outcome::DeniedAuth);
        assert!(e.message.contains("Authorization: Bearer"), "{}", e.message);
        assert!(cx.identity.is_none());
    }
}

/// Unknown, malformed, oversized and disabled keys all get the very same reply.
#[tokio::test]
async fn every_bad_key_is_the_same_401_invalid_api_key() {
    let filter = Config::standard().build(&shared());
    let header = |v: &[u8]| {
        let mut h = HeaderMap::new();
        h.append("authorization", HeaderValue::from_bytes(v).expect("header"));
        h
    };
    let oversized = format!("Bearer sk-sluice-{}", "A".repeat(300));
    let huge = format!("Bearer {}", "A".repeat(64 * 1024));
    let mut two = bearer(ALICE_KEY);
    two.append(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {ROOT_KEY}")).expect("header"),
    );
    let cases: Vec<(&str, HeaderMap)> = vec![
        (
            "unknown",
            bearer("sk-sluice-0000000000000000000000000000000000000000"),
        ),
        ("disabled", bearer(DISABLED_KEY)),
        ("truncated", bearer(&ALICE_KEY[..ALICE_KEY.len() - 1])),
        ("extended", bearer(&format!("{ALICE_KEY}x"))),
        (
            "basic scheme",
            header(format!("Basic {ALICE_KEY}").as_bytes()),
        ),
        ("no scheme", header(ALICE_KEY.as_bytes())),
        ("inner space", header(b"Bearer sk-sluice abc")),
        ("non-ascii", header(b"Bearer sk-sluice-\xff\xfe")),
        ("oversized", header(oversized.as_bytes())),
        ("huge", header(huge.as_bytes())),
        ("two headers", two),
    ];
    let mut bodies = Vec::new();
    for (name, headers) in cases {
        let (v, cx) = head(&*filter, &headers).await;
        let e = refused(v);
        assert_eq!(e.status, 401, "{name}");
        assert_eq!(e.kind, "authentication_error", "{name}");
        assert_eq!(e.code, "invalid_api_key", "{name}");
        assert_eq!(e.outcome, Outcome::DeniedAuth, "{name}");
        assert!(cx.identity.is_none(), "{name}");
        assert!(
            !e.body.contains("sk-sluice"),
            "{name}: the reply echoes the key"
        );
        bodies.push(e.body);
    }
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        1,
        "a caller can tell bad keys apart: {bodies:?}"
    );
}

#[tokio::test]
async fn a_refused_request_carries_no_identity_from_before() {
    let filter = Config::standard().build(&shared());
    let mut cx = cx();
    cx.identity = {
        let (_, ok) = head(&*filter, &bearer(ROOT_KEY)).await;
        ok.identity
    };
    let headers = bearer(DISABLED_KEY);
    let h = RequestHead {
        method: &Method::POST,
        path: "/v1/chat/completions",
        headers: &headers,
    };
    assert!(!allowed(&filter.on_request_head(&h, &mut cx).await));
    assert!(cx.identity.is_none());
}

// ---------------------------------------------------------------------------------------------
// Row 2: roles, permissions per route, model and agent globs, narrowing.

#[tokio::test]
async fn the_role_models_decide_which_models_a_key_may_use() {
    let filter = Config::standard().build(&shared());
    for model in ["mock-echo", "mock-other", "gpt-4o-mini"] {
        let v = call(&*filter, ALICE_KEY, CHAT, Some(model), None).await;
        assert!(allowed(&v), "{model}");
    }
    let e = refused(call(&*filter, ALICE_KEY, CHAT, Some("gpt-4o"), None).await);
    assert_eq!((e.status, e.kind.as_str()), (403, "permission_error"));
    assert_eq!(e.code, "model_not_allowed");
    assert_eq!(e.outcome, Outcome::DeniedPermission);
    assert!(
        e.message.contains("`gpt-4o`"),
        "names the model: {}",
        e.message
    );
    assert!(e.message.contains("alice-laptop"), "{}", e.message);
}

#[tokio::test]
async fn a_key_models_list_narrows_its_role() {
    let filter = Config::standard().build(&shared());
    let ok = call(&*filter, NARROW_KEY, CHAT, Some("mock-echo"), None).await;
    assert!(allowed(&ok));
    for model in ["mock-other", "gpt-4o-mini", "gpt-4o"] {
        let e = refused(call(&*filter, NARROW_KEY, CHAT, Some(model), None).await);
        assert_eq!(
            (e.status, e.code.as_str()),
            (403, "model_not_allowed"),
            "{model}"
        );
    }
    let (_, cx) = head(&*filter, &bearer(NARROW_KEY)).await;
    let grants = cx.identity.expect("identity").grants;
    assert!(grants.may_use_model("mock-echo"));
    assert!(!grants.may_use_model("mock-other"));
}

#[tokio::test]
async fn a_key_models_list_never_widens_its_role() {
    let filter = Config::standard().build(&shared());
    // The key says `*`, the role says `mock-*` and `gpt-4o-mini`: the role wins.
    let ok = call(&*filter, WIDE_KEY, CHAT, Some("mock-echo"), None).await;
    assert!(allowed(&ok));
    for model in ["gpt-4o", "o1", "anything"] {
        let e = refused(call(&*filter, WIDE_KEY, CHAT, Some(model), None).await);
        assert_eq!(e.code, "model_not_allowed", "{model}");
        assert!(e.message.contains("role `analyst`"), "{}", e.message);
    }
}

/// For each route: a key whose role has only the permission it needs passes; a key whose role
/// has every other permission is refused with `permission_denied` naming the permission.
#[tokio::test]
async fn each_route_checks_the_permission_it_needs() {
    // Every governed API as registered (a route added to `api::GOVERNED` is checked here too),
    // then the engine's own routes.
    let mut routes: Vec<(Route, &str, Option<&str>, Option<&str>)> = GOVERNED
        .iter()
        .map(|r| {
            (
                Route::Api(r),
                r.permission.as_str(),
                Some("mock-echo"),
                None,
            )
        })
        .collect();
    routes.extend([
        (Route::ListModels, "models:list", None, None),
        (Route::GetModel, "models:list", None, None),
        (Route::AgentRun, "agents:run", None, Some("daily-scan")),
        (
            Route::AgentRunStatus,
            "agents:run",
            None,
            Some("daily-scan"),
        ),
        (Route::Passthrough, "passthrough", None, None),
    ]);
    let all = [
        "chat",
        "models:list",
        "agents:run",
        "embeddings",
        "passthrough",
    ];
    let mut c = Config::parse("[[orgs]]\nname = \"acme\"\n");
    for p in all {
        let others: Vec<String> = all
            .iter()
            .filter(|o| **o != p)
            .map(|o| format!("{o:?}"))
            .collect();
        for (role, perms) in [
            (format!("only-{p}"), format!("{p:?}")),
            (format!("all-but-{p}"), others.join(", ")),
        ] {
            let extra: Config = toml::from_str(&format!(
                "[[roles]]\nname = {role:?}\npermissions = [{perms}]\nmodels = [\"*\"]\nagents = [\"*\"]\n\
                 [[users]]\nname = {role:?}\norg = \"acme\"\nrole = {role:?}\n"
            ))
            .expect("role parses");
            c.roles.extend(extra.roles);
            c.users.extend(extra.users);
            c.add_key(&role, &role, &format!("sk-test-{role}"), None, false);
        }
    }
    let filter = c.build(&shared());
    for (route, needs, model, agent) in routes {
        let only = format!("sk-test-only-{needs}");
        let v = call(&*filter, &only, route, model, agent).await;
        assert!(allowed(&v), "{route:?} with only `{needs}`");

        let all_but = format!("sk-test-all-but-{needs}");
        let e = refused(call(&*filter, &all_but, route, model, agent).await);
        assert_eq!(e.status, 403, "{route:?}");
        assert_eq!(e.kind, "permission_error", "{route:?}");
        assert_eq!(e.code, "permission_denied", "{route:?}");
        assert!(
            e.message.contains(&format!("`{needs}`")),
            "{route:?}: {}",
            e.message
        );
    }
}

#[tokio::test]
async fn agents_are_checked_against_the_role_globs() {
    let filter = Config::standard().build(&shared());
    for route in [Route::AgentRun, Route::AgentRunStatus] {
        assert!(allowed(
            &call(&*filter, ALICE_KEY, route, None, Some("daily-scan")).await
        ));
        assert!(allowed(
            &call(&*filter, ALICE_KEY, route, None, Some("daily-")).await
        ));
        for agent in ["weekly-scan", "xdaily-scan"] {
            let e = refused(call(&*filter, ALICE_KEY, route, None, Some(agent)).await);
            assert_eq!(
                (e.status, e.code.as_str()),
                (403, "agent_not_allowed"),
                "{agent}"
            );
            assert!(e.message.contains(&format!("`{agent}`")), "{}", e.message);
        }
        // No agent id on an agent route: refused, not waved through.
        let e = refused(call(&*filter, ALICE_KEY, route, None, None).await);
        assert_eq!(e.code, "agent_not_allowed");
    }
    // The agent's model is the administrator's business, not the role's model globs...
    for key in [ALICE_KEY, WIDE_KEY] {
        let v = call(
            &*filter,
            key,
            Route::AgentRun,
            Some("gpt-4o"),
            Some("daily-scan"),
        )
        .await;
        assert!(allowed(&v));
    }
    // ... but a key's own `models` narrows agent runs too (SPEC §12).
    let e = refused(
        call(
            &*filter,
            NARROW_KEY,
            Route::AgentRun,
            Some("gpt-4o"),
            Some("daily-scan"),
        )
        .await,
    );
    assert_eq!((e.status, e.code.as_str()), (403, "model_not_allowed"));
    assert!(e.message.contains("`gpt-4o`"), "{}", e.message);
    let v = call(
        &*filter,
        NARROW_KEY,
        Route::AgentRun,
        Some("mock-echo"),
        Some("daily-scan"),
    )
    .await;
    assert!(allowed(&v));
}

#[tokio::test]
async fn embeddings_and_passthrough_check_the_model_when_one_is_given() {
    let mut c = Config::standard();
    c.add_key(
        "root-narrow",
        "root",
        "sk-test-root-narrow",
        Some(&["text-embedding-*"]),
        false,
    );
    let filter = c.build(&shared());
    for route in [EMBEDDINGS, Route::Passthrough] {
        assert!(allowed(
            &call(
                &*filter,
                "sk-test-root-narrow",
                route,
                Some("text-embedding-3-small"),
                None
            )
            .await
        ));
        assert!(allowed(
            &call(&*filter, "sk-test-root-narrow", route, None, None).await
        ));
        let e = refused(call(&*filter, "sk-test-root-narrow", route, Some("gpt-4o"), None).await);
        assert_eq!(e.code, "model_not_allowed", "{route:?}");
    }
}

#[tokio::test]
async fn chat_without_a_model_is_not_waved_through() {
    let filter = Config::standard().build(&shared());
    let e = refused(call(&*filter, ALICE_KEY, CHAT, None, None).await);
    assert_eq!((e.status, e.code.as_str()), (400, "missing_model"));
}

#[tokio::test]
async fn on_request_without_an_identity_fails_closed() {
    let filter = Config::standard().build(&shared());
    let mut cx = cx();
    cx.route = Route::ListModels;
    let headers = HeaderMap::new();
    let mut body = JsonBody::default();
    let mut req = Request {
        method: &Method::GET,
        path: "/v1/models",
        headers: &headers,
        body: &mut body,
    };
    let e = refused(filter.on_request(&mut req, &mut cx).await);
    assert_eq!(e.status, 401);
}

// ---------------------------------------------------------------------------------------------
// Row 4: the metric, bounded by reason.

fn failures(shared: &Shared, reason: &str) -> f64 {
    shared
        .registry()
        .gather()
        .iter()
        .filter(|f| f.get_name() == auth::FAILURES_METRIC)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.get_name() == "reason" && l.get_value() == reason)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

#[tokio::test]
async fn failures_are_counted_by_bounded_reason() {
    let shared = shared();
    let filter = Config::standard().build(&shared);
    head(&*filter, &HeaderMap::new()).await;
    head(&*filter, &bearer("sk-nope")).await;
    head(&*filter, &bearer(DISABLED_KEY)).await;
    head(&*filter, &bearer(ALICE_KEY)).await;
    assert_eq!(failures(&shared, "missing"), 1.0);
    assert_eq!(failures(&shared, "invalid"), 2.0);
    let labels: Vec<String> = shared
        .registry()
        .gather()
        .iter()
        .filter(|f| f.get_name() == auth::FAILURES_METRIC)
        .flat_map(|f| f.get_metric().iter())
        .flat_map(|m| {
            m.get_label()
                .iter()
                .map(|l| format!("{}={}", l.get_name(), l.get_value()))
        })
        .collect();
    assert_eq!(labels, ["reason=invalid", "reason=missing"]);
}

// ---------------------------------------------------------------------------------------------
// Reload: a new filter from a new config, the same `Shared`.

#[tokio::test]
async fn a_reload_picks_up_added_removed_and_disabled_keys() {
    let shared = shared();
    let before = Config::standard();
    let old = before.build(&shared);

    let mut after = Config::standard();
    after.keys.retain(|k| k.id != "alice-laptop"); // removed
    for k in &mut after.keys {
        if k.id == "root-ci" {
            k.disabled = true; // disabled
        }
        if k.id == "alice-old" {
            k.disabled = false; // re-enabled
        }
    }
    after.add_key("alice-new", "alice", "sk-sluice-added", None, false); // added
    let new = after.build(&shared);

    // Requests that started before the reload keep the old chain.
    assert!(allowed(&head(&*old, &bearer(ALICE_KEY)).await.0));
    assert!(allowed(&head(&*old, &bearer(ROOT_KEY)).await.0));

    assert_eq!(
        refused(head(&*new, &bearer(ALICE_KEY)).await.0).code,
        "invalid_api_key"
    );
    assert_eq!(
        refused(head(&*new, &bearer(ROOT_KEY)).await.0).code,
        "invalid_api_key"
    );
    assert!(allowed(&head(&*new, &bearer(DISABLED_KEY)).await.0));
    let (v, cx) = head(&*new, &bearer("sk-sluice-added")).await;
    assert!(allowed(&v));
    assert_eq!(&*cx.identity.expect("identity").key_id, "alice-new");
    // Both filters count into the one metric the registry serves.
    assert_eq!(failures(&shared, "invalid"), 2.0);
}

// ---------------------------------------------------------------------------------------------
// Row 5: `sluice keys new`.

#[test]
fn generated_keys_have_the_documented_format_and_differ() {
    let re = regex::Regex::new(r"^sk-sluice-[0-9A-Za-z]{40}$").expect("regex");
    let keys: Vec<String> = (0..200).map(|_| auth::generate_key()).collect();
    for k in &keys {
        assert!(re.is_match(k), "{k}");
    }
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len());
    // All 62 characters show up: the alphabet is really base62, not hex or lowercase only.
    let mut seen: Vec<char> = keys
        .iter()
        .flat_map(|k| k[auth::KEY_PREFIX.len()..].chars().collect::<Vec<_>>())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 62);
}

#[derive(Deserialize)]
struct KeysOnly {
    keys: Vec<KeyConfig>,
}

#[tokio::test]
async fn a_pasted_key_entry_makes_the_key_work() {
    let key = auth::generate_key();
    let entry = auth::key_entry_toml("alice-phone", "alice", &key);
    assert!(
        !entry.contains(&key),
        "the entry holds the key itself:\n{entry}"
    );
    assert!(!entry.contains(&key[auth::KEY_PREFIX.len()..]));

    let parsed: KeysOnly = toml::from_str(&entry).expect("the entry is valid TOML");
    let [k] = &parsed.keys[..] else {
        panic!("one [[keys]] entry: {entry}")
    };
    assert_eq!(k.id, "alice-phone");
    assert_eq!(k.user, "alice");
    assert_eq!(k.sha256, auth::key_sha256_hex(&key));
    assert!(!k.disabled && k.models.is_none() && k.rate_limit.is_none());

    // Paste it after the rest of the config, as an operator would.
    let config = Config::parse(&format!("{POLICY_TOML}\n{entry}"));
    let filter = config.build(&shared());
    let (v, cx) = head(&*filter, &bearer(&key)).await;
    assert!(allowed(&v));
    assert_eq!(&*cx.identity.expect("identity").key_id, "alice-phone");
    // And only that key.
    assert!(!allowed(
        &head(&*filter, &bearer(&auth::generate_key())).await.0
    ));
}

#[test]
fn key_entries_quote_awkward_names() {
    let entry = auth::key_entry_toml("id \"with\" quotes", "back\\slash", "sk-x");
    let parsed: KeysOnly = toml::from_str(&entry).expect("valid TOML");
    assert_eq!(parsed.keys[0].id, "id \"with\" quotes");
    assert_eq!(parsed.keys[0].user, "back\\slash");
}

// ---------------------------------------------------------------------------------------------
// Build errors, with their field paths.

#[test]
fn unknown_options_are_errors_at_their_path() {
    let mut options = toml::Table::new();
    options.insert("header".into(), toml::Value::String("x-api-key".into()));
    let errs = Config::standard().build_err(&options);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("filters[0].header: unknown option"),
        "{errs:?}"
    );
}

#[test]
fn broken_references_are_errors_at_their_path() {
    let mut c = Config::standard();
    c.keys[0].sha256 = "not-hex".into();
    c.keys[1].sha256 = c.keys[2].sha256.clone();
    c.keys[3].user = "mallory".into();
    c.roles[0].permissions.push("admin".into());
    c.users[1].org = "nowhere".into();
    c.keys[4].id = "alice-wide".into();
    let errs = c.build_err(&toml::Table::new());
    let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
    assert!(has("keys[0].sha256: must be the 64 hex digits"), "{errs:?}");
    assert!(
        has("keys[2].sha256: the same key hash appears twice"),
        "{errs:?}"
    );
    assert!(has("keys[3].user: no user named `mallory`"), "{errs:?}");
    assert!(
        has("roles[0].permissions[3]: unknown permission `admin`"),
        "{errs:?}"
    );
    assert!(has("users[1].org: no org named `nowhere`"), "{errs:?}");
    assert!(has("keys[4].id: duplicate key id `alice-wide`"), "{errs:?}");
    assert_eq!(errs.len(), 6, "{errs:?}");
}

#[test]
fn the_filter_is_built_through_from_policy_too() {
    let c = Config::standard();
    let f = AuthFilter::from_policy(&c.policy(), &toml::Table::new(), "filters[0]", &shared())
        .expect("builds");
    assert_eq!(f.key_count(), 5);
    assert_eq!(f.name(), "auth");
}

// ---------------------------------------------------------------------------------------------
// No key (nor its digest) in Debug output or in any log line, at any level.

#[tokio::test]
async fn debug_output_never_shows_a_key_or_its_digest() {
    let c = Config::standard();
    let filter = AuthFilter::from_policy(&c.policy(), &toml::Table::new(), "filters[0]", &shared())
        .expect("builds");
    let shown = format!("{filter:?} {filter:#?}");
    assert!(
        shown.contains("alice-laptop") && shown.contains("alice-old"),
        "{shown}"
    );
    for key in [ALICE_KEY, NARROW_KEY, WIDE_KEY, DISABLED_KEY, ROOT_KEY] {
        assert!(!shown.contains(key), "{shown}");
        assert!(!shown.contains(&auth::key_sha256_hex(key)), "{shown}");
    }
    let (_, cx) = head(&filter, &bearer(ALICE_KEY)).await;
    let identity = format!("{:?}", cx.identity);
    assert!(identity.contains("alice-laptop"));
    assert!(!identity.contains(ALICE_KEY) && !identity.contains(&auth::key_sha256_hex(ALICE_KEY)));
}

/// Records every event and span field at every level.
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        span.record(&mut Fields(&mut out));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        values.record(&mut Fields(&mut out));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = write!(out, "\n{} ", event.metadata().level());
        event.record(&mut Fields(&mut out));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn no_log_line_shows_a_key_even_at_trace_level() {
    let log = Arc::new(Mutex::new(String::new()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // The process-wide subscriber (this is the only test that sets one): tracing caches each
    // callsite's interest process-wide, so a thread-scoped subscriber misses lines whose
    // callsite another test thread registered first. Other tests' lines land here too, and the
    // checks below cover them as well.
    tracing::subscriber::set_global_default(Capture(log.clone())).unwrap_or_else(|e| panic!("{e}"));
    {
        runtime.block_on(async {
            let mut c = Config::standard();
            // A key narrowed to nothing: the build warns about it.
            c.add_key(
                "alice-typo",
                "alice",
                "sk-test-typo",
                Some(&["gtp-*"]),
                false,
            );
            let filter = c.build(&shared());
            head(&*filter, &HeaderMap::new()).await;
            head(
                &*filter,
                &bearer("sk-sluice-unknownunknownunknownunknownunknown"),
            )
            .await;
            head(&*filter, &bearer(DISABLED_KEY)).await;
            let mut basic = HeaderMap::new();
            basic.insert(
                "authorization",
                HeaderValue::from_static("Basic c2stc2x1aWNlLXNlY3JldA=="),
            );
            head(&*filter, &basic).await;
            call(&*filter, ALICE_KEY, CHAT, Some("gpt-4o"), None).await;
            call(&*filter, NARROW_KEY, Route::AgentRun, None, Some("weekly")).await;
        })
    }
    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // The capture works: the refusals and the build warning were logged, with key ids.
    assert!(
        log.contains("disabled API key") && log.contains("alice-old"),
        "{log}"
    );
    assert!(log.contains("alice-typo"), "{log}");
    assert!(
        log.contains("model_not_allowed") && log.contains("alice-narrow"),
        "{log}"
    );
    for secret in [
        "sk-sluice-unknownunknownunknownunknownunknown",
        "c2stc2x1aWNlLXNlY3JldA==",
        DISABLED_KEY,
        ALICE_KEY,
        NARROW_KEY,
        "sk-test-typo",
    ] {
        assert!(!log.contains(secret), "{secret} in:\n{log}");
    }
    for key in [DISABLED_KEY, ALICE_KEY, NARROW_KEY] {
        assert!(
            !log.contains(&auth::key_sha256_hex(key)),
            "digest in:\n{log}"
        );
    }
}
