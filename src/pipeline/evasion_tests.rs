//! The probe's evasions, thrown at the request pipeline by proptest (issue 23 item 6): escapes,
//! `;` and query parameters, odd ceilings, multipart and form bodies, BOMs, secrets in every
//! client-chosen field. Whatever the mix, three invariants hold:
//!
//! 1. nothing is forwarded unless the caller may use the model it goes to (the narrow key may
//!    use `gpt` only; `secret` lives on the same upstream);
//! 2. nothing forwarded holds the secret in any spelling (body decoded as JSON, query
//!    percent-decoded): DLP blocks requests, so a secret that got through was not scanned;
//! 3. the audit record (built as the audit filter builds it, after the log phase) holds no
//!    secret.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use proptest::prelude::*;
use serde_json::Value;
use sluice_filters::audit::AuditRecord;
use sluice_filters::Outcome;

use super::{Call, Head, Step};
use crate::chain::FilterTypes;
use crate::config::Config;
use crate::state::EngineState;

const NARROW: &str = "sk-sluice-EVADEevadeEVADEevadeEVADEevadeEVADEevad";
const SECRET: &str = "AKIAIOSFODNN7EXAMPLE";

struct World {
    rt: tokio::runtime::Runtime,
    state: Arc<EngineState>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:1"
admin_listen = "127.0.0.1:2"
[store]
url = "sqlite://{dir}/keys.db"
[[upstreams]]
name = "openai"
url = "http://127.0.0.1:9/base"
[[models]]
name = "gpt"
upstream = "openai"
[[models]]
name = "secret"
upstream = "openai"
[[orgs]]
name = "o"
[[roles]]
name = "r"
permissions = ["chat", "passthrough", "embeddings", "agents:run"]
models = ["*"]
agents = ["*"]
[[users]]
name = "u"
org = "o"
role = "r"
[[keys]]
id = "narrow"
user = "u"
sha256 = "{sha}"
models = ["gpt"]
[[agents]]
id = "a"
model = "gpt"
instructions = "Say ok."
[dlp]
request_action = "block"
[[filters]]
type = "auth"
[[filters]]
type = "dlp"
"#,
            dir = dir.path().display(),
            sha = sluice_filters::auth::key_sha256_hex(NARROW),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let config = Config::parse(&toml).unwrap_or_else(|e| panic!("{e}"));
        let state = rt
            .block_on(EngineState::offline(config, FilterTypes::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        World {
            rt,
            state,
            _dir: dir,
        }
    })
}

/// Where the secret goes (and how it is spelled).
#[derive(Debug, Clone, Copy)]
enum Plant {
    Nowhere,
    Content,
    ContentEscaped,
    Key,
    Query,
    QueryEncoded,
    Path,
    AgentId,
    RequestId,
    UserAgent,
    Model,
}

/// One request of the probe.
#[derive(Debug, Clone)]
struct Probe {
    path: &'static str,
    semicolon: bool,
    query_model: bool,
    model: &'static str,
    ceiling: &'static str,
    envelope: u8,
    plant: Plant,
}

fn probe() -> impl Strategy<Value = Probe> {
    let path = prop::sample::select(vec![
        "/v1/chat/completions",
        "/v1/Chat/Completions/",
        "/v1/%63hat/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/x/../chat/completions",
        "/v1/files",
        "/v1/batches",
        "/v1/agents/a/run",
    ]);
    let model = prop::sample::select(vec![
        "",
        r#""model":"gpt","#,
        r#""model":"secret","#,
        r#""model":"\u0073ecret","#,
        r#""model":null,"#,
        r#""model":["secret"],"#,
        r#""params":{"model":"secret"},"#,
        r#""model":"gpt","model":"secret","#,
    ]);
    let ceiling = prop::sample::select(vec![
        "",
        r#""max_tokens":8,"#,
        r#""max_tokens":8.0,"#,
        r#""max_tokens":"8","#,
        r#""max_tokens":-1,"#,
        r#""max_completion_tokens":0,"max_tokens":100000,"#,
        r#""max_output_tokens":1e3,"#,
    ]);
    let plant = prop::sample::select(vec![
        Plant::Nowhere,
        Plant::Content,
        Plant::ContentEscaped,
        Plant::Key,
        Plant::Query,
        Plant::QueryEncoded,
        Plant::Path,
        Plant::AgentId,
        Plant::RequestId,
        Plant::UserAgent,
        Plant::Model,
    ]);
    (
        path,
        any::<bool>(),
        any::<bool>(),
        model,
        ceiling,
        0u8..6,
        plant,
    )
        .prop_map(
            |(path, semicolon, query_model, model, ceiling, envelope, plant)| Probe {
                path,
                semicolon,
                query_model,
                model,
                ceiling,
                envelope,
                plant,
            },
        )
}

/// The request the probe stands for: path, query, headers and body bytes.
fn build(p: &Probe) -> (String, Option<String>, HeaderMap, Bytes) {
    let mut path = match p.plant {
        Plant::Path => format!("/v1/{SECRET}/x"),
        Plant::AgentId => format!("/v1/agents/{SECRET}/run"),
        _ => p.path.to_string(),
    };
    if p.semicolon {
        path.push_str(";x=1");
    }
    let mut params: Vec<String> = Vec::new();
    if p.query_model {
        params.push("model=secret".into());
    }
    match p.plant {
        Plant::Query => params.push(format!("note={SECRET}")),
        Plant::QueryEncoded => params.push("note=%41KIA%49OSFODNN7EXAMPLE".into()),
        _ => {}
    }
    let query = (!params.is_empty()).then(|| params.join("&"));
    let text = match p.plant {
        Plant::Content => SECRET.to_string(),
        Plant::ContentEscaped => "\\u0041KIAIOSFODNN7EXAMPLE".to_string(),
        _ => "hi".to_string(),
    };
    let key = match p.plant {
        Plant::Key => format!(r#""{SECRET}":1,"#),
        _ => String::new(),
    };
    let model = match p.plant {
        Plant::Model => format!(r#""model":"{SECRET}","#),
        _ => p.model.to_string(),
    };
    let json = format!(
        r#"{{{model}{key}{ceiling}"input":"{text}","messages":[{{"role":"user","content":"{text}"}}]}}"#,
        ceiling = p.ceiling
    );
    let mut h = HeaderMap::new();
    let bearer = format!("Bearer {NARROW}");
    h.insert("authorization", hv(&bearer));
    let (ctype, body) = match p.envelope {
        0 => ("application/json", json),
        1 => ("text/plain", format!("\u{feff}{json}")),
        2 => (
            "multipart/form-data; boundary=b",
            format!("--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nsecret\r\n--b\r\ncontent-disposition: form-data; name=\"x\"\r\n\r\n{text}\r\n--b--\r\n"),
        ),
        3 => ("application/x-www-form-urlencoded", format!("model=secret&x={text}")),
        4 => ("text/plain", format!("[{json}]")),
        _ => ("", json),
    };
    if !ctype.is_empty() {
        h.insert("content-type", hv(ctype));
    }
    match p.plant {
        Plant::RequestId => h.insert("x-request-id", hv(&format!("id-{SECRET}"))),
        Plant::UserAgent => h.insert("user-agent", hv(&format!("probe/{SECRET}"))),
        _ => None,
    };
    (path, query, h, Bytes::from(body))
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Every spelling of what goes upstream: the bytes, their JSON strings decoded, the query
/// percent-decoded.
fn spellings(body: &[u8], query: Option<&str>) -> String {
    let mut out = String::from_utf8_lossy(body).into_owned();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        out.push('\n');
        out.push_str(&decoded_strings(&v));
    }
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            out.push_str(&format!("\n{k}={v}"));
        }
    }
    out
}

fn decoded_strings(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(decoded_strings).collect::<Vec<_>>().join("\n"),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}\n{}", decoded_strings(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Runs one probe through the phases and checks the invariants.
async fn check(p: &Probe) -> Result<(), TestCaseError> {
    let st = &world().state;
    let (path, query, h, body) = build(p);
    let mut call = Call::new(st);
    let head = Head {
        method: &Method::POST,
        path: &path,
        query: query.as_deref(),
        headers: &h,
        client_ip: None,
        listen: None::<SocketAddr>,
    };
    let mut reply = call.begin(&head).await;
    if reply.is_none() {
        if let Step::Reply(r) = call.on_body(&head, body.clone()).await {
            reply = Some(r);
        }
    }
    let status = match &reply {
        Some(r) => r.status.as_u16(),
        None => {
            // 1. RBAC on the model.
            let id = call.cx.identity.clone();
            let model = call.cx.model.clone();
            let allowed = match (&id, &model) {
                (Some(id), Some(m)) => id.grants.may_use_model(m),
                _ => false,
            };
            prop_assert!(
                allowed,
                "forwarded without RBAC on the model: {p:?} → {model:?}"
            );
            // 2. Nothing unscanned.
            let uri: Uri = format!(
                "{path}{}",
                query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default()
            )
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
            let up = call.upstream_head(&h, &uri);
            let sent_query = match up {
                Ok(u) => u.uri.and_then(|u| u.query().map(str::to_string)),
                Err(e) => return Err(TestCaseError::fail(e)),
            }
            .or_else(|| uri.query().map(str::to_string));
            let sent = call.held_body().cloned().unwrap_or(body);
            let all = spellings(&sent, sent_query.as_deref());
            prop_assert!(!all.contains(SECRET), "forwarded a secret: {p:?}\n{all}");
            if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&sent) {
                if let Some(Value::String(m)) = o.get("model") {
                    prop_assert!(m == "gpt", "forwarded another model: {p:?} → {m}");
                }
            }
            200
        }
    };
    if let Some(r) = &reply {
        call.replied(r);
    }
    call.log(status, None).await;
    // 3. The record the audit filter writes from this request.
    let outcome = reply.as_ref().map_or(Outcome::Ok, |r| r.outcome);
    let ex = call.exchange(status, outcome, None);
    let record = AuditRecord::from_request(&call.cx, &ex);
    let text = String::from_utf8_lossy(&record.to_body().unwrap_or_default()).into_owned();
    prop_assert!(
        !text.contains(SECRET),
        "a secret in the audit record: {p:?}\n{text}"
    );
    prop_assert!(!text.contains("KIAIOSFODNN7"), "{p:?}\n{text}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn evasions_never_forward_unauthorized_or_unscanned_and_never_reach_the_audit(p in probe()) {
        world().rt.block_on(check(&p))?;
    }
}
