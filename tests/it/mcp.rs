//! `/mcp/{server}` through real gateways against a scripted MCP server on a real socket: tool
//! RBAC (`tools/list` filtered, denied calls never forwarded), DLP on arguments and results in
//! both framings (an SSE result split at every offset), credentials, sessions across two
//! instances, rate limits, audit records, metrics, a dead server, the 401 challenge and the
//! RFC 9728 document. The official SDKs drive the same route in tests/python/test_mcp.py and
//! tests/node/mcp.test.mjs.

use crate::support;
use crate::support::mcp::*;
use crate::support::{client, metrics, url};
use serde_json::{json, Value};

#[test]
fn tools_are_listed_and_called_per_role_and_key() {
    let (port, log) = mcp_server();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = gateway(port, &audit, "");

    let (s, h, body) = post(
        &gw,
        ALICE,
        "tools",
        &rpc(
            1,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        ),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(h["mcp-session-id"], "sess-42");
    assert_eq!(h["mcp-protocol-version"], "2025-06-18");

    let (_, _, body) = post(&gw, ALICE, "tools", &rpc(2, "tools/list", json!({})));
    let names: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "leak"], "admin_delete is not the role's");
    let (_, _, body) = post(&gw, NARROW, "tools", &rpc(3, "tools/list", json!({})));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1, "{v}");

    let (s, _, body) = post(&gw, ALICE, "tools", &call("echo", json!({"text": "hello"})));
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["content"][0]["text"], r#"{"text":"hello"}"#);

    for (key, tool) in [(ALICE, "admin_delete"), (NARROW, "leak")] {
        let (s, _, body) = post(&gw, key, "tools", &call(tool, json!({})));
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["error"]["code"], -32001, "{v}");
        assert_eq!(v["error"]["data"]["type"], "permission_denied");
    }
    let forwarded: Vec<String> = calls_seen(&log)
        .iter()
        .map(|s| s.body["params"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(forwarded, ["echo"], "denied calls never reach the server");

    // The server's own credential, never the client's; MCP headers through unchanged.
    for seen in log.lock().unwrap().iter() {
        assert_eq!(
            seen.header("authorization"),
            Some(&*format!("Bearer {SERVER_TOKEN}"))
        );
        assert_eq!(seen.header("mcp-session-id"), Some("sess-42"));
        assert_eq!(seen.header("mcp-protocol-version"), Some("2025-06-18"));
        assert_eq!(seen.header("cookie"), None);
    }

    let recs = records(&audit, 6);
    assert_eq!(recs.len(), 6, "one record per JSON-RPC request: {recs:?}");
    let methods: Vec<&str> = recs
        .iter()
        .map(|r| r["mcp_method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "initialize",
            "tools/list",
            "tools/list",
            "tools/call",
            "tools/call",
            "tools/call"
        ]
    );
    assert_eq!(recs[3]["tool"], "echo");
    assert_eq!(recs[3]["outcome"], "ok");
    assert_eq!(recs[3]["path"], "/mcp/tools");
    assert_eq!(recs[4]["tool"], "admin_delete");
    assert_eq!(recs[4]["outcome"], "denied_permission");
    assert!(
        !std::fs::read_to_string(&audit).unwrap().contains("hello"),
        "no arguments in the trail"
    );

    let m = metrics(&gw);
    assert!(
        m.contains(r#"sluice_mcp_calls_total{outcome="ok",server="tools",tool="echo"} 1"#),
        "{m}"
    );
    // Listed by the server, so its own label; the narrow key's `leak` was denied.
    assert!(m.contains(r#"sluice_mcp_calls_total{outcome="denied_permission",server="tools",tool="admin_delete"} 1"#), "{m}");
    assert!(
        m.contains(
            r#"sluice_mcp_calls_total{outcome="denied_permission",server="tools",tool="leak"} 1"#
        ),
        "{m}"
    );
    let (_, _, _) = post(&gw, ALICE, "tools", &call("invented_name", json!({})));
    let m = metrics(&gw);
    assert!(
        m.contains(r#"tool="other""#),
        "unlisted tools are `other`: {m}"
    );
    assert!(!m.contains("invented_name"));
}

#[test]
fn dlp_governs_arguments_and_results() {
    let (port, log) = mcp_server();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = gateway(port, &audit, "");

    // Block in the arguments: a JSON-RPC error, nothing forwarded.
    let (s, _, body) = post(
        &gw,
        ALICE,
        "tools",
        &call("echo", json!({"text": "key AKIAIOSFODNN7EXAMPLE"})),
    );
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["data"]["type"], "dlp_blocked", "{v}");
    assert!(!body.contains("AKIA"));
    assert!(calls_seen(&log).is_empty());

    // Redact in the arguments: the server sees the redacted text.
    let (_, _, body) = post(
        &gw,
        ALICE,
        "tools",
        &call("echo", json!({"text": "employee EMP-123456"})),
    );
    assert!(body.contains("[REDACTED:employee_id]"), "{body}");
    let seen = calls_seen(&log);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body["params"]["arguments"]["text"],
        "employee [REDACTED:employee_id]"
    );

    // Redact in a result: text content and structuredContent.
    let (_, _, body) = post(&gw, ALICE, "tools", &call("leak", json!({"what": "email"})));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["result"]["content"][0]["text"], "row: mail [REDACTED:email]",
        "{v}"
    );
    assert_eq!(
        v["result"]["structuredContent"]["owner"],
        "[REDACTED:email]"
    );

    // Block in a result: an error result instead.
    let (_, _, body) = post(
        &gw,
        ALICE,
        "tools",
        &call("leak", json!({"what": "codename"})),
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(!body.contains("BLUEBIRD"));

    let recs = records(&audit, 4);
    let outcomes: Vec<&str> = recs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["dlp_blocked", "ok", "ok", "dlp_blocked"]);
    assert_eq!(recs[0]["dlp"][0]["detector"], "aws_access_key");
    assert_eq!(recs[0]["dlp"][0]["direction"], "request");
    assert_eq!(recs[2]["dlp"][0]["direction"], "response");
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in ["AKIA", "EMP-123456", "erin@", "carol@", "BLUEBIRD"] {
        assert!(!text.contains(secret), "{secret} in the audit trail");
    }
}

#[test]
fn an_sse_result_split_at_every_offset_is_redacted_the_same() {
    let (port, _log) = mcp_server();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(port, &dir.path().join("audit.jsonl"), "");
    let (s, h, whole) = post(&gw, ALICE, "tools", &call("sse_result", json!({"cut": 0})));
    assert_eq!(s, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(whole.contains("[REDACTED:email]"), "{whole}");
    assert!(!whole.contains("dave@"));
    assert!(
        whole.contains("id: 7\n") && whole.contains("id: 8\n"),
        "event ids kept: {whole}"
    );
    assert!(whole.contains(r#""method":"notifications/progress""#));
    let len = {
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1, "message": "working"}});
        let done = json!({"jsonrpc": "2.0", "id": 9, "result": {"content": [{"type": "text", "text": "found dave@example.com in the ledger"}]}});
        format!(
            "event: message\nid: 7\ndata: {progress}\n\nevent: message\nid: 8\ndata: {done}\n\n"
        )
        .len()
    };
    for cut in 1..len {
        let (s, _, body) = post(
            &gw,
            ALICE,
            "tools",
            &call("sse_result", json!({"cut": cut})),
        );
        assert_eq!(s, 200);
        assert_eq!(body, whole, "cut at {cut}");
    }
}

#[test]
fn a_session_spans_two_instances_and_the_server_stream_is_governed() {
    let (port, log) = mcp_server();
    let dir = tempfile::tempdir().unwrap();
    let a = gateway(port, &dir.path().join("a.jsonl"), "");
    let b = gateway(port, &dir.path().join("b.jsonl"), "");
    let (_, h, _) = post(&a, ALICE, "tools", &rpc(1, "initialize", json!({})));
    let sid = h["mcp-session-id"].to_str().unwrap().to_string();
    let r = client()
        .post(url(&b, "/mcp/tools"))
        .bearer_auth(ALICE)
        .header("mcp-session-id", &sid)
        .json(&call("echo", json!({"text": "on b"})))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().unwrap().contains("on b"));
    let seen = calls_seen(&log);
    assert_eq!(seen[0].header("mcp-session-id"), Some(sid.as_str()));

    // GET: the server's own stream, scanned like answers.
    let r = client()
        .get(url(&b, "/mcp/tools"))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().unwrap();
    assert!(
        text.contains("[REDACTED:email]") && !text.contains("bob@"),
        "{text}"
    );
    // DELETE ends the session at the server.
    let r = client()
        .delete(url(&a, "/mcp/tools"))
        .bearer_auth(ALICE)
        .header("mcp-session-id", &sid)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let last = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.method.as_str(), last.header("mcp-session-id")),
        ("DELETE", Some(sid.as_str()))
    );
}

#[test]
fn refusals_at_the_http_level() {
    let (port, log) = mcp_server();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = gateway(port, &audit, "rate_limit = { requests_per_minute = 2 }");

    let r = client()
        .post(url(&gw, "/mcp/tools"))
        .json(&rpc(1, "initialize", json!({})))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let meta_url = format!(
        "http://{}/.well-known/oauth-protected-resource/mcp/tools",
        gw.listen_addr()
    );
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{meta_url}\"")
    );
    let doc: Value = client().get(&meta_url).send().unwrap().json().unwrap();
    assert_eq!(
        doc["resource"],
        format!("http://{}/mcp/tools", gw.listen_addr())
    );
    assert_eq!(doc["bearer_methods_supported"][0], "header");

    assert_eq!(
        support::error_code(
            client()
                .post(url(&gw, "/mcp/tools"))
                .bearer_auth(NOMCP)
                .json(&rpc(1, "tools/list", json!({})))
                .send()
                .unwrap(),
            403
        ),
        "permission_denied"
    );
    assert_eq!(
        support::error_code(
            client()
                .post(url(&gw, "/mcp/nowhere"))
                .bearer_auth(ALICE)
                .json(&rpc(1, "tools/list", json!({})))
                .send()
                .unwrap(),
            404
        ),
        "not_found"
    );

    // Only tools/call counts against the limit.
    for i in 0..3 {
        assert_eq!(
            post(&gw, ALICE, "tools", &rpc(i, "tools/list", json!({}))).0,
            200
        );
    }
    assert_eq!(post(&gw, ALICE, "tools", &call("echo", json!({}))).0, 200);
    assert_eq!(post(&gw, ALICE, "tools", &call("echo", json!({}))).0, 200);
    let r = client()
        .post(url(&gw, "/mcp/tools"))
        .bearer_auth(ALICE)
        .json(&call("echo", json!({})))
        .send()
        .unwrap();
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(support::error_code(r, 429), "rate_limit_exceeded");
    assert_eq!(calls_seen(&log).len(), 2);

    // A dead server: 502 upstream_unavailable, audited upstream_error.
    let r = client()
        .post(url(&gw, "/mcp/dead"))
        .bearer_auth(NARROW)
        .json(&rpc(1, "initialize", json!({})))
        .send()
        .unwrap();
    assert_eq!(support::error_code(r, 502), "upstream_unavailable");
    let recs = records(&audit, 11);
    let dead: Vec<&Value> = recs.iter().filter(|r| r["path"] == "/mcp/dead").collect();
    assert_eq!(dead.len(), 1, "{recs:?}");
    assert_eq!(dead[0]["outcome"], "upstream_error");
    assert_eq!(dead[0]["status"], 502);
    assert_eq!(
        recs.iter()
            .filter(|r| r["outcome"] == "rate_limited")
            .count(),
        1
    );
}

#[test]
fn config_errors_name_their_field() {
    let bad = format!(
        "{}{}",
        support::server_section(),
        r#"
[[mcp_servers]]
name = "tools"
url = "ftp://nowhere"
price_per_call_usd = -1
[[mcp_servers]]
name = "tools"
url = "http://127.0.0.1:9/mcp"
[[roles]]
name = "r"
permissions = ["mcp"]
mcp = ["tools:*", "jira:*", "no-colon", "*:ok"]
"#
    );
    let errs = match sluice::Config::parse(&bad) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    for want in [
        "mcp_servers[0].url",
        "mcp_servers[0].price_per_call_usd",
        "mcp_servers[1].name: duplicate MCP server `tools`",
        "roles[0].mcp[1]: `jira:*` names no server",
        "roles[0].mcp[2]",
    ] {
        assert!(errs.contains(want), "{want} missing in:\n{errs}");
    }
    assert!(
        !errs.contains("roles[0].mcp[0]") && !errs.contains("roles[0].mcp[3]"),
        "{errs}"
    );
    let unknown = format!(
        "{}[[mcp_servers]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/\"\ntoken = \"t\"\n",
        support::server_section()
    );
    let errs = sluice::Config::parse(&unknown)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(errs.contains("mcp_servers[0].token: unknown key"), "{errs}");
}

#[test]
fn a_server_stream_ends_when_its_client_goes_away() {
    let (port, log) = mcp_server();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = gateway(port, &audit, "");
    let mut stream = std::net::TcpStream::connect(gw.listen_addr()).unwrap();
    let req = format!(
        "GET /mcp/tools HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {ALICE}\r\naccept: text/event-stream\r\nmcp-session-id: sess-hold\r\n\r\n",
        gw.listen_addr()
    );
    std::io::Write::write_all(&mut stream, req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("[REDACTED:email]") {
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !log.lock().unwrap().iter().any(|s| s.method == "GET closed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the server's stream outlived its client"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let recs = records(&audit, 1);
    assert_eq!(recs[0]["outcome"], "client_closed", "{recs:?}");
}
