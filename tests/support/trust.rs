//! The hostile trust suite's rig (`tests/it/hostile_trust.rs`): a recording upstream, a real
//! `sluice run` with its logs and audit trail in files, raw-socket helpers.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::process::{raw, SluiceProcess};
use super::{free_port, Directory};
use serde_json::{json, Value};

pub const KEY: &str = "sk-sluice-TRUSTtrustTRUSTtrustTRUSTtrustTRUSTtrus";
pub const NARROW: &str = "sk-sluice-NARROWnarrowNARROWnarrowNARROWnarrowNA";
pub const NOCHAT: &str = "sk-sluice-NOCHATnochatNOCHATnochatNOCHATnochatNO";
pub const ONE: &str = "sk-sluice-ONEoneONEoneONEoneONEoneONEoneONEoneONEo";
pub const ADMIN_TOKEN: &str = "trust-admin-token-0123456789";
/// Secrets a client puts in the fields it chooses.
pub const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
pub const GHP: &str = "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";
pub const SLUICE_ID: &str = "sk-sluice-IDidIDidIDidIDidIDidIDidIDidIDidIDidIDid";
pub const UPSTREAM_KEY: &str = "sk-upstream-own-credential";

/// An upstream that records every request (head and body) and answers by the body's marker:
/// `ECHO-ERROR` → a 400 echoing the AWS key; `TRUNCATED` → a JSON answer cut short holding an
/// escaped AWS key; anything else → a small chat completion, with a `Server` header and an
/// internal one.
pub struct Recorder {
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || record(conn, &s));
            }
        });
        Recorder { port, seen }
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }
}

pub fn record(mut conn: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = conn.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    if let Ok(mut s) = seen.lock() {
        s.push(text.clone());
    }
    let (status, body) = if text.contains("ECHO-ERROR") {
        let b = json!({"error": {"message": format!("bad prompt: {AWS}"), "type": "invalid_request_error"}});
        ("400 Bad Request", b.to_string())
    } else if text.contains("TRUNCATED") {
        (
            "200 OK",
            r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"\u0041KIAIOSFODNN7EXAMPLE"#
                .to_string(),
        )
    } else {
        let b = json!({"id": "c", "object": "chat.completion", "created": 0, "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
        ("200 OK", b.to_string())
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nserver: secret-upstream/1.2\r\nx-internal-trace: node-7\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A `sluice run` subprocess ([`SluiceProcess`]) and its audit log.
pub struct Gateway {
    proc: SluiceProcess,
    audit: PathBuf,
}

impl std::ops::Deref for Gateway {
    type Target = SluiceProcess;
    fn deref(&self) -> &SluiceProcess {
        &self.proc
    }
}

pub fn sha(k: &str) -> String {
    sluice::filters::auth::key_sha256_hex(k)
}

/// A gateway in front of `upstream`; `server_extra` is added to `[server]`.
pub fn start(upstream: u16, request_action: &str, server_extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (port, admin) = (free_port(), free_port());
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace_seconds = 1
admin_token_env = "TRUST_ADMIN_TOKEN"
{server_extra}
[store]
url = "sqlite://{db}"
[[upstreams]]
name = "tenant"
url = "http://127.0.0.1:{upstream}/tenantA"
api_key_env = "TRUST_UPSTREAM_KEY"
[[models]]
name = "m"
upstream = "tenant"
[[models]]
name = "secret-model"
upstream = "tenant"
{directory}
[[agents]]
id = "a"
model = "m"
instructions = "Say ok."
[dlp]
request_action = "{request_action}"
[audit]
path = "{audit}"
fsync = "always"
"#,
        directory = Directory::role(
            "r",
            &[
                "chat",
                "models:list",
                "passthrough",
                "embeddings",
                "agents:run"
            ],
            &["*"]
        )
        .agents(&["*"])
        .also_role("lister", &["models:list"], &["*"])
        .user("l", "acme", "lister")
        .key("trust-key", KEY)
        .key_with("narrow-key", NARROW, r#"models = ["m"]"#)
        .key_of("l", "nochat-key", NOCHAT, "")
        .key_with(
            "one-key",
            ONE,
            "rate_limit = { requests_per_minute = 1, tokens_per_minute = 1000 }"
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
        &[
            ("TRUST_UPSTREAM_KEY", UPSTREAM_KEY),
            ("TRUST_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    Gateway { proc, audit }
}

pub fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn body_of(resp: &str) -> Value {
    resp.split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

pub fn post(path: &str, key: &str, extra: &str, body: &str) -> Vec<u8> {
    let auth = if key.is_empty() {
        String::new()
    } else {
        format!("authorization: Bearer {key}\r\n")
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn chat(model: &str, text: &str) -> String {
    json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

pub fn audit_text(gw: &Gateway) -> String {
    std::fs::read_to_string(&gw.audit).unwrap_or_default()
}

pub fn audit_records(gw: &Gateway) -> Vec<Value> {
    audit_text(gw)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn wait_records(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = audit_records(gw);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn log_text(gw: &Gateway) -> String {
    gw.logs()
}

/// The sum of a metric's series whose labels include `label` (`""`: all of them).
pub fn metric(gw: &Gateway, name: &str, label: &str) -> f64 {
    let req = format!(
        "GET /metrics HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        gw.admin
    );
    raw(gw.admin, req.as_bytes())
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Client-chosen headers holding secrets: a user agent and an `x-request-id`.
pub fn hostile_headers() -> String {
    format!("user-agent: probe/{GHP}\r\nx-request-id: {SLUICE_ID}\r\n")
}
