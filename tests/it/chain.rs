//! The filter chain through a real gateway: order, local replies, body holding and rewriting,
//! per-event stream delivery, and a logging phase for every outcome. Also runs the embedding
//! example.

#[path = "../../examples/require_header.rs"]
mod example;

use std::sync::{Arc, Mutex};

use crate::support::*;
use async_trait::async_trait;
use serde_json::{json, Value};
use sluice::filters::{
    ConfigErrors, Cx, Exchange, Filter, JsonBody, Needs, Policy, Request, Shared, StreamEvent,
    Verdict,
};

/// Appends " [seen]" to the last message of chat requests.
struct Rewrite;

#[async_trait]
impl Filter for Rewrite {
    fn name(&self) -> &str {
        "rewrite"
    }
    async fn on_request(&self, req: &mut Request<'_>, _cx: &mut Cx) -> Verdict {
        if let Some(Value::String(s)) = req
            .body
            .json_mut()
            .and_then(|v| v.pointer_mut("/messages/0/content"))
        {
            s.push_str(" [seen]");
        }
        Verdict::Continue
    }
}

/// Upper-cases answers, whole and streamed.
struct Upper;

#[async_trait]
impl Filter for Upper {
    fn name(&self) -> &str {
        "upper"
    }
    fn needs(&self) -> Needs {
        Needs {
            response_body: true,
            stream_events: true,
        }
    }
    fn on_response_body(&self, body: &mut JsonBody, _cx: &mut Cx) {
        if let Some(Value::String(s)) = body
            .json_mut()
            .and_then(|v| v.pointer_mut("/choices/0/message/content"))
        {
            *s = s.to_uppercase();
        }
    }
    fn on_stream_events(&self, events: &mut Vec<StreamEvent>, _end: bool, _cx: &mut Cx) {
        for ev in events.iter_mut() {
            if let Some(Value::String(s)) = ev
                .json_mut()
                .and_then(|v| v.pointer_mut("/choices/0/delta/content"))
            {
                *s = s.to_uppercase();
            }
        }
    }
}

/// Records every on_log and on_response_complete.
#[derive(Default)]
struct Recorder {
    logs: Mutex<Vec<(String, u16, &'static str)>>,
    completes: Mutex<Vec<String>>,
}

struct RecorderFilter(Arc<Recorder>);

#[async_trait]
impl Filter for RecorderFilter {
    fn name(&self) -> &str {
        "recorder"
    }
    fn on_response_complete(&self, _ex: &Exchange, cx: &Cx) -> Result<(), String> {
        if let Ok(mut c) = self.0.completes.lock() {
            c.push(cx.request_id.clone());
        }
        Ok(())
    }
    async fn on_log(&self, ex: &Exchange, cx: &Cx) {
        if let Ok(mut l) = self.0.logs.lock() {
            l.push((cx.request_id.clone(), ex.status, ex.outcome.as_str()));
        }
    }
}

fn builder(rec: Arc<Recorder>) -> sluice::GatewayBuilder {
    example::builder()
        .filter_type(
            "rewrite",
            |_: &Policy<'_>,
             _: &toml::Table,
             _: &str,
             _: &Shared|
             -> Result<Arc<dyn Filter>, ConfigErrors> { Ok(Arc::new(Rewrite)) },
        )
        .filter_type(
            "upper",
            |_: &Policy<'_>,
             _: &toml::Table,
             _: &str,
             _: &Shared|
             -> Result<Arc<dyn Filter>, ConfigErrors> { Ok(Arc::new(Upper)) },
        )
        .filter_type(
            "recorder",
            move |_: &Policy<'_>,
                  _: &toml::Table,
                  _: &str,
                  _: &Shared|
                  -> Result<Arc<dyn Filter>, ConfigErrors> {
                Ok(Arc::new(RecorderFilter(rec.clone())))
            },
        )
}

const CHAIN: &str = r#"
[[filters]]
type = "recorder"
[[filters]]
type = "require_header"
header = "x-team"
[[filters]]
type = "rewrite"
[[filters]]
type = "upper"
"#;

#[test]
fn chain_runs_in_order_with_local_replies_body_rewrites_and_stream_events() {
    let rec = Arc::new(Recorder::default());
    let gw = start_with(builder(rec.clone()), &format!("{MOCK}{CHAIN}"));
    let c = client();

    // A local reply from the second filter: the upstream is never reached.
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-request-id", "no-team")
        .json(&chat_body("hello", false))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 400), "missing_header");

    // Body held, rewritten by `rewrite`, answer rewritten by `upper`.
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-team", "a")
        .header("x-request-id", "whole")
        .json(&chat_body("hello there", false))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        json_of(r)["choices"][0]["message"]["content"],
        "HELLO THERE [SEEN]"
    );

    // The same through the retry-buffer path (a body far over 64 KiB).
    let long = "word ".repeat(40_000);
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-team", "a")
        .json(&chat_body(&long, false))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    let v = json_of(r);
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(content.len(), long.len() + " [seen]".len());
    assert!(content.ends_with(" [SEEN]"));

    // Per-event delivery to stream filters.
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-team", "a")
        .header("x-request-id", "streamed")
        .json(&chat_body("quiet words", true))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    let (text, _, done) = collect_stream(r);
    assert_eq!(text, "QUIET WORDS [SEEN]");
    assert!(done);

    drop(gw);
    let logs = rec.logs.lock().map(|l| l.clone()).unwrap_or_default();
    let find = |id: &str| logs.iter().find(|(r, _, _)| r == id).cloned();
    assert_eq!(
        find("no-team").map(|l| (l.1, l.2)),
        Some((400, "bad_request"))
    );
    assert_eq!(find("whole").map(|l| (l.1, l.2)), Some((200, "ok")));
    assert_eq!(find("streamed").map(|l| (l.1, l.2)), Some((200, "ok")));
    let completes = rec.completes.lock().map(|c| c.clone()).unwrap_or_default();
    for id in ["no-team", "whole", "streamed"] {
        assert!(
            completes.iter().any(|c| c == id),
            "on_response_complete for {id}"
        );
    }
}

#[test]
fn logging_runs_for_upstream_failures_too() {
    let rec = Arc::new(Recorder::default());
    let closed = free_port();
    let gw = start_with(
        builder(rec.clone()),
        &format!(
            "[[upstreams]]\nname = \"dead\"\nurl = \"http://127.0.0.1:{closed}\"\n[[models]]\nname = \"m\"\nupstream = \"dead\"\n[[filters]]\ntype = \"recorder\"\n"
        ),
    );
    let r = client()
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-request-id", "dead-1")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 502), "upstream_unavailable");
    drop(gw);
    let logs = rec.logs.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        logs.iter()
            .any(|l| l.0 == "dead-1" && l.1 == 502 && l.2 == "upstream_error"),
        "{logs:?}"
    );
}

#[test]
fn embedding_example_builds_and_enforces_its_filter() {
    let gw = start_with(
        example::builder(),
        &format!("{MOCK}[[filters]]\ntype = \"require_header\"\nheader = \"x-cost-center\"\n"),
    );
    let r = post_chat(&gw, &chat_body("hi", false));
    assert_eq!(error_code(r, 400), "missing_header");
    let r = client()
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-cost-center", "cc-42")
        .json(&chat_body("hi", false))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);

    // Its config errors carry field paths.
    let bad = sluice::Config::parse(&format!(
        "{}{MOCK}[[filters]]\ntype = \"require_header\"\nheadr = \"x\"\n",
        server_section()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let err = example::builder()
        .config(bad)
        .check()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("filters[0].headr: unknown key"), "{err}");
    assert!(err.contains("filters[0].header: required"), "{err}");
}

/// `[quota] max_requests = N`: the quota filter's own section, which the engine has no field for.
#[derive(serde::Deserialize)]
struct QuotaSettings {
    max_requests: u64,
}

/// Refuses (429 `quota_exceeded`) every request after the first `max_requests` of this load.
struct Quota {
    max: u64,
    seen: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Filter for Quota {
    fn name(&self) -> &str {
        "quota"
    }
    async fn on_request(&self, _req: &mut Request<'_>, _cx: &mut Cx) -> Verdict {
        if self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < self.max {
            return Verdict::Continue;
        }
        sluice::filters::Reply::error(429, "quota_exceeded", "over quota").into()
    }
}

/// A filter type with a section of its own, registered as an embedder (or the built-in list)
/// does: nothing about `[quota]` is known to the engine.
fn quota_builder() -> sluice::GatewayBuilder {
    let build = |policy: &Policy<'_>,
                 options: &toml::Table,
                 path: &str,
                 _: &Shared|
     -> Result<Arc<dyn Filter>, ConfigErrors> {
        let errs = sluice::filters::config::no_options(options, path, "set in [quota]");
        let Some(table) = policy.section_table("quota") else {
            return Err(ConfigErrors::one(path, "needs a [quota] section"));
        };
        let settings = sluice::filters::config::together(
            errs,
            sluice::filters::config::parse_section::<QuotaSettings>("quota", table),
        )?;
        Ok(Arc::new(Quota {
            max: settings.max_requests,
            seen: Default::default(),
        }))
    };
    sluice::GatewayBuilder::new()
        .filter_type("quota", sluice::filters::WithSection::new("quota", build))
}

fn check_errors(builder: sluice::GatewayBuilder, rest: &str) -> String {
    let config = sluice::Config::parse(&format!("{}{MOCK}{rest}", server_section()))
        .unwrap_or_else(|e| panic!("{e}"));
    builder
        .config(config)
        .check()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn a_filter_types_own_section_reaches_it_and_is_checked_by_it() {
    let quota = "[[filters]]\ntype = \"quota\"\n[quota]\nmax_requests = 1\n";
    let gw = start_with(quota_builder(), &format!("{MOCK}{quota}"));
    let r = post_chat(&gw, &chat_body("hi", false));
    assert_eq!(r.status().as_u16(), 200);
    let r = post_chat(&gw, &chat_body("hi", false));
    assert_eq!(error_code(r, 429), "quota_exceeded");

    // Its errors carry the section's field paths.
    let err = check_errors(
        quota_builder(),
        "[[filters]]\ntype = \"quota\"\n[quota]\nmax_request = 2\nmax_requests = \"many\"\n",
    );
    assert!(err.contains("quota.max_requests: invalid type"), "{err}");
    assert!(err.contains("quota.max_request: unknown"), "{err}");

    // A section no registered type owns is an unknown key, as it always was.
    let err = check_errors(quota_builder(), "[quotas]\nmax_requests = 1\n");
    assert_eq!(err, "quotas: unknown key");
    let err = check_errors(sluice::GatewayBuilder::new(), "[quota]\nmax_requests = 1\n");
    assert_eq!(err, "quota: unknown key");
}
