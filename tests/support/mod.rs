//! Test harness: real gateways on real loopback sockets.
#![allow(dead_code)]

mod directory;
pub mod fleet;
pub mod keys;
pub mod mcp;
pub mod oidc;
pub mod otlp;
pub mod postgres;
pub mod process;
// The same throw-away redis-server as the filter tests: one copy, shared by path.
#[path = "../../filters/tests/support/redis_server.rs"]
pub mod redis_server;
pub mod scripted;
pub mod spend;
pub mod trust;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use sluice::{Config, Gateway, GatewayBuilder};

pub use directory::Directory;

pub const DEMO_KEY: &str = "sk-sluice-DEMOkeyDEMOkeyDEMOkeyDEMOkeyDEMOkey12345";

/// A free loopback port (bound, read, released), never one this process handed out before:
/// the kernel may offer a just-released port again, and two sections of one config must differ.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// `[server]` on free ports, with a short grace period for tests.
pub fn server_section() -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\nthreads = 2\nshutdown_grace_seconds = 5\n",
        free_port(),
        free_port()
    )
}

/// The mock upstream and the model `mock-echo` → `echo`.
pub const MOCK: &str = r#"
[[upstreams]]
name = "mock"
builtin = "mock"

[[models]]
name = "mock-echo"
upstream = "mock"
upstream_model = "echo"
"#;

pub fn parse(toml: &str) -> Config {
    Config::parse(toml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{toml}"))
}

/// Starts a gateway from config text (the `[server]` section is added on free ports).
pub fn start(rest: &str) -> Gateway {
    start_with(GatewayBuilder::new(), rest)
}

pub fn start_with(builder: GatewayBuilder, rest: &str) -> Gateway {
    let mut last = None;
    // A free port can be taken between probing and binding; try again on fresh ports.
    for _ in 0..3 {
        let toml = format!("{}{}", server_section(), rest);
        match builder_clone(&builder).config(parse(&toml)).start() {
            Ok(g) => return g,
            Err(e) => last = Some(e.to_string()),
        }
    }
    let _ = builder;
    panic!("gateway did not start: {}", last.unwrap_or_default())
}

fn builder_clone(b: &GatewayBuilder) -> GatewayBuilder {
    b.clone()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

pub fn url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{}", gw.listen_addr(), path)
}

pub fn admin_url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{}", gw.admin_addr(), path)
}

pub fn chat_body(text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": "mock-echo", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

pub fn post_chat(gw: &Gateway, body: &serde_json::Value) -> reqwest::blocking::Response {
    client()
        .post(url(gw, "/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

pub fn json_of(resp: reqwest::blocking::Response) -> serde_json::Value {
    let text = resp.text().unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts the contract's error shape and returns the code.
pub fn error_code(resp: reqwest::blocking::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let v = json_of(resp);
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message in {v}"
    );
    assert!(e["type"].is_string(), "type in {v}");
    assert!(e.get("param").is_some(), "param in {v}");
    e["code"].as_str().unwrap_or_default().to_string()
}

/// Reads SSE events (`data:` payloads) from a streamed response, one at a time.
pub struct Events<R: Read> {
    reader: BufReader<R>,
}

impl<R: Read> Events<R> {
    pub fn new(r: R) -> Self {
        Events {
            reader: BufReader::new(r),
        }
    }

    /// The next `data:` payload, or None at the end of the body.
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(d) = line.trim_end().strip_prefix("data: ") {
                return Some(d.to_string());
            }
        }
    }
}

/// The concatenated `delta.content` of a whole stream, and whether it ended with [DONE].
pub fn collect_stream<R: Read>(r: R) -> (String, Vec<serde_json::Value>, bool) {
    let mut ev = Events::new(r);
    let mut text = String::new();
    let mut chunks = Vec::new();
    let mut done = false;
    while let Some(d) = ev.next_data() {
        if d == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&d).unwrap_or_else(|e| panic!("bad event {d}: {e}"));
        if let Some(c) = v
            .pointer("/choices/0/delta/content")
            .and_then(|c| c.as_str())
        {
            text.push_str(c);
        }
        chunks.push(v);
    }
    (text, chunks, done)
}

/// A value of a metric line in Prometheus text (`name{labels} value`), summed over lines that
/// contain every given fragment.
pub fn metric_sum(text: &str, name: &str, fragments: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.as_bytes().get(name.len()) == Some(&b'{')
                    || l.as_bytes().get(name.len()) == Some(&b' '))
        })
        .filter(|l| fragments.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The admin listener's `/metrics` text.
pub fn metrics(gw: &Gateway) -> String {
    client()
        .get(admin_url(gw, "/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}

/// Waits until a metric reaches `want` and returns the `/metrics` text that showed it: a
/// request is counted in its logging phase (and usage reconciled), just after its last byte
/// went out, so a client can be a moment ahead.
pub fn wait_metric(gw: &Gateway, name: &str, fragments: &[&str], want: f64) -> String {
    wait_metric_until(gw, name, fragments, &format!("{want}"), |got| got == want)
}

/// Like [`wait_metric`], for a metric that must reach at least `want`.
pub fn wait_metric_at_least(gw: &Gateway, name: &str, fragments: &[&str], want: f64) -> String {
    wait_metric_until(gw, name, fragments, &format!(">= {want}"), |got| {
        got >= want
    })
}

fn wait_metric_until(
    gw: &Gateway,
    name: &str,
    fragments: &[&str],
    expected: &str,
    ok: impl Fn(f64) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(gw);
        let got = metric_sum(&text, name, fragments);
        if ok(got) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}{fragments:?} is {got}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
