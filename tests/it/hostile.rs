//! What a hostile client can do, on raw sockets against a real `sluice run` (its logs captured)
//! and a recording upstream: every probe of the edge-hardening review, those that held before
//! and those that were fixed, so that none of it comes back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;

use std::time::{Duration, Instant};

use crate::support::process::{raw, SluiceProcess};
use crate::support::trust::Recorder;
use crate::support::{free_port, Directory};
use serde_json::{json, Value};

const KEY: &str = "sk-sluice-HOSTILEhostileHOSTILEhostileHOSTILEhost";
const TIGHT: &str = "sk-sluice-TIGHTtightTIGHTtightTIGHTtightTIGHTtigh";
const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
const PROMPT: &str = "zebra-quartz-prompt-marker";
const UPSTREAM_KEY: &str = "sk-upstream-own-credential";

/// A `sluice run` subprocess ([`SluiceProcess`]) and its audit log.
struct Gateway {
    proc: SluiceProcess,
    audit: PathBuf,
}

impl std::ops::Deref for Gateway {
    type Target = SluiceProcess;
    fn deref(&self) -> &SluiceProcess {
        &self.proc
    }
}

fn start(upstream: u16, request_action: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (port, admin) = (free_port(), free_port());
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace_seconds = 1
header_timeout_ms = 1000
body_timeout_ms = 1500
keepalive_idle_seconds = 1
[store]
url = "sqlite://{db}"
[[upstreams]]
name = "tenant"
url = "http://127.0.0.1:{upstream}/tenantA"
api_key_env = "HOSTILE_UPSTREAM_KEY"
[[models]]
name = "m"
upstream = "tenant"
{directory}
[dlp]
request_action = "{request_action}"
[audit]
path = "{audit}"
fsync = "always"
"#,
        directory = Directory::role(
            "r",
            &["chat", "models:list", "passthrough", "embeddings"],
            &["*"]
        )
        .key("hostile-key", KEY)
        .key_with(
            "tight-key",
            TIGHT,
            "rate_limit = { requests_per_minute = 10, tokens_per_minute = 1000 }"
        )
        .filters(&["auth", "rate_limit", "dlp", "audit"])
        .toml(),
        db = dir.path().join("keys.db").display(),
        audit = audit.display(),
    );
    let proc = SluiceProcess::spawn(
        dir,
        &config,
        (port, admin),
        &[("HOSTILE_UPSTREAM_KEY", UPSTREAM_KEY)],
    );
    Gateway { proc, audit }
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn post(path: &str, key: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chat(text: &str) -> String {
    json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

fn audit_records(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(&gw.audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_records(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = audit_records(gw);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_text(gw: &Gateway) -> String {
    gw.logs()
}

#[test]
fn smuggling_and_malformed_framing_are_refused_and_reach_no_upstream() {
    let up = Recorder::start();
    let gw = start(up.port, "block");
    let body = chat("hi");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CL+TE", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n").into_bytes()),
        ("duplicate Content-Length", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: {}\r\ncontent-length: 5\r\n\r\n{body}", body.len()).into_bytes()),
        ("obs-fold", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nx-a: 1\r\n folded\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()),
        ("bare LF in a chunk extension", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n{:x};ext\nswallowed\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes()),
        ("a bad chunk size", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").into_bytes()),
        ("a header flood", {
            let mut h = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n");
            for i in 0..3000 {
                h.push_str(&format!("x-flood-{i}: {}\r\n", "a".repeat(40)));
            }
            h.push_str("\r\n");
            h.into_bytes()
        }),
    ];
    for (name, req) in cases {
        let resp = raw(gw.addr, &req);
        let s = status(&resp);
        assert!(s == 0 || (400..500).contains(&s), "{name}: {resp}");
    }
    assert!(
        up.requests().is_empty(),
        "reached the upstream: {:?}",
        up.requests()
    );
    // Client mistakes are the client's: 400 bad_request in the audit trail, never an ERROR.
    let recs = wait_records(&gw, 2);
    assert!(
        recs.iter().all(|r| r["outcome"] != "internal_error"),
        "{recs:?}"
    );
    assert!(
        recs.iter()
            .any(|r| r["outcome"] == "bad_request" && r["status"] == 400),
        "{recs:?}"
    );
    let log = log_text(&gw);
    assert!(!log.contains(" ERROR "), "{log}");
}

#[test]
fn targets_paths_and_bodies_that_read_differently_elsewhere_are_refused() {
    let up = Recorder::start();
    let gw = start(up.port, "block");
    let body = chat("hi");
    for (name, req, want) in [
        (
            "absolute-form",
            post("http://evil.example/v1/chat/completions", KEY, "", &body),
            400..500,
        ),
        (
            "dot segments above the root",
            post("/v1/../../tenantB/v1/chat/completions", KEY, "", &body),
            400..401,
        ),
        (
            "an escaped slash",
            post("/v1/chat%2Fcompletions", KEY, "", &body),
            400..401,
        ),
        (
            "duplicate JSON keys",
            post(
                "/v1/chat/completions",
                KEY,
                "",
                r#"{"model":"m","model":"other","messages":[]}"#,
            ),
            400..401,
        ),
        (
            "a compressed body",
            post(
                "/v1/chat/completions",
                KEY,
                "content-encoding: gzip\r\n",
                &body,
            ),
            400..401,
        ),
        (
            "a key-less path trick",
            post("/v1/models/../chat/completions", "nokey", "", &body),
            401..402,
        ),
    ] {
        let resp = raw(gw.addr, &req);
        assert!(want.contains(&status(&resp)), "{name}: {resp}");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
}

#[test]
fn what_reaches_the_upstream_holds_no_client_credential_and_stays_under_its_path() {
    let up = Recorder::start();
    let gw = start(up.port, "block");
    let body = chat(PROMPT);
    let resp = raw(
        gw.addr,
        &post(
            "/v1/custom/x/../thing?api_key=sk-leak-1&key=sk-leak-2&keep=1",
            KEY,
            &format!("x-api-key: {KEY}\r\napi-key: {KEY}\r\n"),
            &body,
        ),
    );
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    let first = req.lines().next().unwrap_or_default();
    assert_eq!(
        first, "POST /tenantA/v1/custom/thing?keep=1 HTTP/1.1",
        "{req}"
    );
    assert!(!req.contains(KEY) && !req.contains("sk-leak"), "{req}");
    assert!(req.contains(&format!("Bearer {UPSTREAM_KEY}")), "{req}");
    // A governed route spelled another way is that route (token limits included).
    let huge = chat(&"word ".repeat(20_000));
    for path in [
        "/v1/chat/completions/",
        "/v1/Chat/Completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/custom/thing",
    ] {
        let lower = path.to_lowercase();
        let body = if lower.contains("custom") || lower.contains("chat") {
            huge.clone()
        } else {
            json!({"model": "m", "prompt": "word ".repeat(20_000), "input": "word ".repeat(20_000)})
                .to_string()
        };
        let resp = raw(gw.addr, &post(path, TIGHT, "", &body));
        assert_eq!(status(&resp), 429, "{path}: {resp}");
    }
    // Neither the key nor the prompt reaches the logs or the audit trail.
    let log = log_text(&gw);
    let audit = std::fs::read_to_string(&gw.audit).unwrap_or_default();
    for secret in [KEY, TIGHT, PROMPT, "sk-leak"] {
        assert!(!log.contains(secret), "{secret} in the log");
        assert!(!audit.contains(secret), "{secret} in the audit trail");
    }
}

#[test]
fn a_secret_in_the_path_is_refused_or_recorded_redacted() {
    let up = Recorder::start();
    let gw = start(up.port, "monitor");
    let resp = raw(gw.addr, &post(&format!("/v1/{AWS}"), KEY, "", "{}"));
    assert!(status(&resp) > 0, "{resp}");
    let recs = wait_records(&gw, 1);
    let text = serde_json::to_string(&recs).unwrap_or_default();
    assert!(!text.contains(AWS), "{text}");
    assert!(
        recs.iter()
            .any(|r| r["path"] == "/v1/[REDACTED:aws_access_key]"),
        "{text}"
    );
    drop(gw);
    let gw = start(up.port, "block");
    let resp = raw(gw.addr, &post(&format!("/v1/{AWS}"), KEY, "", "{}"));
    assert_eq!(status(&resp), 400, "{resp}");
    assert!(resp.contains("dlp_blocked"), "{resp}");
}

#[test]
fn slow_clients_are_bounded_and_counted_as_theirs() {
    let up = Recorder::start();
    let gw = start(up.port, "block");
    // A head sent one line every 400 ms (header_timeout_ms = 1000): closed before it is done.
    let mut s = TcpStream::connect(gw.addr).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n");
    let mut closed = false;
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(400));
        if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            closed = true;
            break;
        }
    }
    if !closed {
        let mut buf = [0u8; 64];
        closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
    }
    assert!(closed, "a slow head kept its connection");
    // A body one byte every 400 ms (body_timeout_ms = 1500): 408, the connection closed.
    let body = chat("slow body");
    let mut s = TcpStream::connect(gw.addr).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: {}\r\n\r\n", body.len());
    let _ = s.write_all(head.as_bytes());
    for b in body.as_bytes().iter().take(10) {
        std::thread::sleep(Duration::from_millis(400));
        if s.write_all(&[*b]).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let resp = String::from_utf8_lossy(&out);
    assert_eq!(status(&resp), 408, "{resp}");
    // An idle keep-alive connection (keepalive_idle_seconds = 1) is closed.
    let mut s = TcpStream::connect(gw.addr).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ =
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-none\r\n\r\n");
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"));
    let mut rest = Vec::new();
    let t0 = Instant::now();
    let _ = s.read_to_end(&mut rest);
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "an idle connection stayed open"
    );
    // A client that goes away mid-body: client_closed, not internal_error.
    let mut s = TcpStream::connect(gw.addr).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: 500\r\n\r\n{{\"model\"").as_bytes());
    drop(s);
    let recs = wait_records(&gw, 3);
    let outcomes: Vec<&str> = recs.iter().filter_map(|r| r["outcome"].as_str()).collect();
    assert!(outcomes.contains(&"client_closed"), "{outcomes:?}");
    assert!(!outcomes.contains(&"internal_error"), "{outcomes:?}");
    let log = log_text(&gw);
    assert!(!log.contains(" ERROR "), "{log}");
}

#[test]
fn the_admin_listener_refuses_cross_site_requests() {
    let up = Recorder::start();
    let gw = start(up.port, "block");
    let csrf = b"POST /admin/reload HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: http://evil.example\r\ncontent-type: text/plain\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(status(&raw(gw.admin, csrf)), 403);
    let host = b"POST /admin/reload HTTP/1.1\r\nhost: evil.example\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(status(&raw(gw.admin, host)), 403);
    let ok = format!(
        "POST /admin/reload HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        gw.admin
    );
    assert_eq!(status(&raw(gw.admin, ok.as_bytes())), 200);
}

#[test]
fn the_rate_limiter_admits_exactly_its_limit_under_concurrency() {
    let up = Recorder::start();
    let gw = start(up.port, "block");
    let addr = gw.addr;
    let admitted: usize = (0..30)
        .map(|_| {
            std::thread::spawn(move || {
                status(&raw(
                    addr,
                    &post("/v1/chat/completions", TIGHT, "", &chat("x")),
                )) == 200
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(|h| h.join().ok())
        .filter(|ok| *ok)
        .count();
    assert_eq!(admitted, 10);
}
