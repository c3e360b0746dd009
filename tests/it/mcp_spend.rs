//! Budgets on MCP (SPEC §16, §15): every `tools/call` to a server with `price_per_call_usd`
//! reserves that price against the caller's budgets and is charged it when the server answered;
//! a call refused before reaching the server costs nothing; a call that does not fit is `429
//! budget_exceeded` and never reaches the server.

use crate::support;
use crate::support::client;
use crate::support::mcp::*;
use serde_json::{json, Value};

#[test]
fn priced_tool_calls_are_held_to_the_callers_budget() {
    let (port, log) = mcp_server();
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.jsonl");
    let store = format!("sqlite://{}", dir.path().join("sluice.db").display());
    // The `tools` server costs $0.01 a call; alice may spend $0.025 a day.
    let extra =
        format!("budget = {{ usd = 0.025, period = \"daily\" }}\n[store]\nurl = \"{store}\"\n");
    let gw = gateway(port, &audit, &extra);

    let (s, h, body) = post(&gw, ALICE, "tools", &call("echo", json!({"text": "one"})));
    assert_eq!(s, 200, "{body}");
    let remaining: f64 = h["x-sluice-budget-remaining-usd"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("decimal");
    assert!((remaining - 0.015).abs() < 1e-9, "{remaining}");
    // A JSON answer is held whole before its head goes out: it carries its real cost.
    assert_eq!(h["x-sluice-cost-usd"], "0.010000");

    // Blocked by DLP before the server: nothing charged.
    let (s, _, body) = post(
        &gw,
        ALICE,
        "tools",
        &call("echo", json!({"text": "key AKIAIOSFODNN7EXAMPLE"})),
    );
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"]["data"]["type"], "dlp_blocked", "{v}");

    // So a second paid call still fits ($0.02 spent), a third does not.
    let (s, _, body) = post(&gw, ALICE, "tools", &call("echo", json!({"text": "two"})));
    assert_eq!(s, 200, "{body}");
    let (s, h, body) = post(&gw, ALICE, "tools", &call("echo", json!({"text": "three"})));
    assert_eq!(s, 429, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("user `alice`"),
        "{v}"
    );
    assert!(h.get("retry-after").is_some());
    assert!(
        h.get("x-sluice-cost-usd").is_none(),
        "a refused call costs nothing"
    );
    let forwarded: Vec<Value> = calls_seen(&log)
        .iter()
        .map(|s| s.body["params"]["arguments"]["text"].clone())
        .collect();
    assert_eq!(
        forwarded,
        [json!("one"), json!("two")],
        "refused calls never reach the server"
    );

    // The audit trail and the usage API agree: $0.02 under `mcp:tools`.
    let recs = records(&audit, 4);
    let outcomes: Vec<&str> = recs.iter().filter_map(|r| r["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["ok", "dlp_blocked", "ok", "budget_exceeded"]);
    // Paid calls carry their price; calls that never reached the server cost nothing.
    let costs: Vec<Option<f64>> = recs.iter().map(|r| r["cost_usd"].as_f64()).collect();
    assert_eq!(costs, [Some(0.01), None, Some(0.01), None], "{recs:?}");
    // The spend metric counts them under the usage rows' label.
    support::wait_metric(
        &gw,
        "sluice_spend_usd_total",
        &["org=\"acme\"", "model=\"mcp:tools\""],
        0.02,
    );
    let u: Value = client()
        .get(support::url(&gw, "/v1/usage"))
        .bearer_auth(ALICE)
        .send()
        .expect("usage")
        .json()
        .expect("usage JSON");
    let cost: f64 = u["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|r| r["model"] == "mcp:tools")
                .filter_map(|r| r["cost_usd"].as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    assert!((cost - 0.02).abs() < 1e-9, "{u}");
    assert!(
        (u["budget"]["spent_usd"].as_f64().unwrap_or(0.0) - 0.02).abs() < 1e-9,
        "{u}"
    );

    // Another server without a price costs nothing: `dead` is unreachable, but its refusal
    // comes after the budget check, which a free call always passes.
    let (s, _, _) = post(&gw, ALICE, "dead", &call("anything", json!({})));
    assert_eq!(s, 502);
}
