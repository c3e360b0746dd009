//! The scripted MCP server and the gateway config of tests/it/mcp.rs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{client, free_port, start, url, Directory};
use serde_json::{json, Value};

pub const ALICE: &str = "sk-sluice-MCPaliceMCPaliceMCPaliceMCPalice123456";
pub const NARROW: &str = "sk-sluice-MCPnarrowMCPnarrowMCPnarrowMCPnarrow12";
pub const NOMCP: &str = "sk-sluice-MCPnomcpMCPnomcpMCPnomcpMCPnomcpMCP1234";
pub const SERVER_TOKEN: &str = "mcp-server-token-for-tests";

/// What the scripted server received: headers (lower-case names) and the JSON-RPC body.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A scripted MCP server speaking Streamable HTTP: `initialize` opens a session, `tools/list`
/// lists three tools, `tools/call` answers per tool (JSON, or SSE for `sse_result`, written
/// in two pieces cut at `arguments.cut`).
pub fn mcp_server() -> (u16, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let l = log.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let l = l.clone();
            std::thread::spawn(move || serve(s, l));
        }
    });
    (port, log)
}

pub fn serve(mut stream: TcpStream, log: Log) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let method = line.split(' ').next().unwrap_or("").to_string();
    let (mut headers, mut length) = (Vec::new(), 0usize);
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 {
            return;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap_or((l, ""));
        let (n, v) = (n.to_ascii_lowercase(), v.trim().to_string());
        if n == "content-length" {
            length = v.parse().unwrap_or(0);
        }
        headers.push((n, v));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let hold = method == "GET"
        && headers
            .iter()
            .any(|(n, v)| n == "mcp-session-id" && v == "sess-hold");
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        headers,
        body: body.clone(),
    });
    let (ctype, extra, payload, cut) = answer(&method, &body);
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n{extra}connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let bytes = payload.as_bytes();
    let cut = cut.min(bytes.len());
    stream.write_all(&bytes[..cut]).unwrap();
    stream.flush().unwrap();
    if cut > 0 && cut < bytes.len() {
        std::thread::sleep(Duration::from_millis(5));
    }
    stream.write_all(&bytes[cut..]).unwrap();
    if hold {
        // A silent server stream: records when the gateway closes it.
        stream.flush().unwrap();
        let mut buf = [0u8; 64];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        log.lock().unwrap().push(Seen {
            method: "GET closed".into(),
            headers: Vec::new(),
            body: Value::Null,
        });
    }
}

/// The answer to one request: content type, extra headers, payload, where to cut it.
pub fn answer(method: &str, body: &Value) -> (&'static str, String, String, usize) {
    let id = body["id"].clone();
    let session = "mcp-session-id: sess-42\r\nmcp-protocol-version: 2025-06-18\r\n".to_string();
    if method == "GET" {
        let ev = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "mail bob@example.com"}});
        return (
            "text/event-stream",
            session,
            format!("id: 1\ndata: {ev}\n\n"),
            0,
        );
    }
    if method == "DELETE" {
        return ("application/json", session, String::new(), 0);
    }
    let result = match body["method"].as_str().unwrap_or("") {
        "initialize" => {
            json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "scripted", "version": "1"}})
        }
        "tools/list" => json!({"tools": [
            {"name": "echo", "inputSchema": {"type": "object"}},
            {"name": "leak", "inputSchema": {"type": "object"}},
            {"name": "admin_delete", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => {
            let args = &body["params"]["arguments"];
            match body["params"]["name"].as_str().unwrap_or("") {
                "leak" => {
                    let row = match args["what"].as_str() {
                        Some("codename") => "row: project BLUEBIRD",
                        _ => "row: mail erin@example.com",
                    };
                    json!({"content": [{"type": "text", "text": row}],
                                 "structuredContent": {"owner": "carol@example.com"}})
                }
                "sse_result" => {
                    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1, "message": "working"}});
                    let done = json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "found dave@example.com in the ledger"}]}});
                    let sse = format!("event: message\nid: 7\ndata: {progress}\n\nevent: message\nid: 8\ndata: {done}\n\n");
                    let cut = args["cut"].as_u64().unwrap_or(0) as usize;
                    return ("text/event-stream", session, sse, cut);
                }
                _ => json!({"content": [{"type": "text", "text": args.to_string()}]}),
            }
        }
        _ => return ("application/json", session, String::new(), 0),
    };
    let out = json!({"jsonrpc": "2.0", "id": id, "result": result});
    ("application/json", session, out.to_string(), 0)
}

pub fn sha(key: &str) -> String {
    sluice::filters::auth::key_sha256_hex(key)
}

pub fn config(mcp_port: u16, audit: &Path, extra: &str) -> String {
    format!(
        r#"
[[mcp_servers]]
name = "tools"
url = "http://127.0.0.1:{mcp_port}/mcp"
api_key_env = "SLUICE_TEST_MCP_TOKEN"
price_per_call_usd = 0.01

[[mcp_servers]]
name = "dead"
url = "http://127.0.0.1:{dead}/mcp"

{directory}
[dlp]
packs = ["secrets", "pii"]
request_action = "block"
response_action = "redact"
[[dlp.rules]]
name = "employee_id"
regex = 'EMP-[0-9]{{6}}'
action = "redact"
[[dlp.rules]]
name = "codename"
keywords = ["BLUEBIRD"]
action = "block"

[audit]
path = "{audit}"
fsync = "always"

"#,
        dead = free_port(),
        directory = Directory::role("agent", &["mcp"], &[])
            .role_fields(r#"mcp = ["tools:echo", "tools:leak", "tools:sse_result", "dead:*"]"#)
            .alice_fields(extra)
            .also_role("chatter", &["chat"], &[])
            .user("bob", "acme", "chatter")
            .key("alice-key", ALICE)
            .key_with("narrow-key", NARROW, r#"mcp = ["tools:echo"]"#)
            .key_of("bob", "bob-key", NOMCP, "")
            .filters(&["auth", "rate_limit", "dlp", "audit"])
            .toml(),
        audit = audit.display(),
    )
}

pub fn gateway(mcp_port: u16, audit: &Path, extra: &str) -> sluice::Gateway {
    std::env::set_var("SLUICE_TEST_MCP_TOKEN", SERVER_TOKEN);
    start(&config(mcp_port, audit, extra))
}

pub fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

pub fn call(name: &str, args: Value) -> Value {
    rpc(9, "tools/call", json!({"name": name, "arguments": args}))
}

/// POSTs one message as an MCP client does; returns status, headers and body text.
pub fn post(
    gw: &sluice::Gateway,
    key: &str,
    server: &str,
    msg: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .post(url(gw, &format!("/mcp/{server}")))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", "sess-42")
        .header("mcp-protocol-version", "2025-06-18")
        .header("cookie", "client=secret")
        .json(msg)
        .send()
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().unwrap())
}

pub fn records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if recs.len() >= n || Instant::now() > deadline {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn calls_seen(log: &Log) -> Vec<Seen> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.body["method"] == "tools/call")
        .cloned()
        .collect()
}
