//! Operability (issue 17): every metric family of SPEC §7 and every series of a configured
//! value is on the first scrape, the first event of each kind lands on a series that already
//! existed (so `rate()` sees it), and the dashboard and alert rules in `deploy/` use only
//! metrics a running gateway exports.

use std::collections::BTreeSet;

use crate::support::*;
use serde_json::{json, Value};

/// The metric families of SPEC §7 (and the README's list) a gateway with the whole chain
/// exports. `sluice_upstream_attempts_total` and `sluice_upstream_in_service` (SPEC §11) join
/// this list when upstream resilience lands.
const FAMILIES: &[&str] = &[
    "sluice_requests_total",
    "sluice_request_duration_seconds",
    "sluice_upstream_duration_seconds",
    "sluice_overhead_seconds",
    "sluice_time_to_first_token_seconds",
    "sluice_tokens_total",
    "sluice_rate_limited_total",
    "sluice_dlp_findings_total",
    "sluice_audit_records_total",
    "sluice_audit_queue_depth",
    "sluice_audit_queue_capacity",
    "sluice_audit_write_errors_total",
    "sluice_upstream_errors_total",
    "sluice_upstream_attempts_total",
    "sluice_upstream_in_service",
    "sluice_active_streams",
    "sluice_auth_failures_total",
    "sluice_agent_runs_total",
    "sluice_config_reloads_total",
    "sluice_rate_limit_backend_errors_total",
    "sluice_rate_limit_check_duration_seconds",
    "sluice_rate_limit_reconciled_tokens_total",
];

/// Two upstreams (the mock and a closed port), three models, one org with a rate-limited key,
/// an agent, and the whole chain with its audit log in `dir`.
fn full_chain(dir: &std::path::Path, closed_port: u16) -> String {
    format!(
        r#"{MOCK}
[[upstreams]]
name = "down"
url = "http://127.0.0.1:{closed_port}"
connect_timeout_ms = 500

[[models]]
name = "mock-second"
upstream = "mock"

[[models]]
name = "mock-down"
upstream = "down"

{directory}
[[agents]]
id = "daily-scan"
model = "mock-echo"
instructions = "Summarise."

[dlp]
request_action = "block"
response_action = "redact"
[[dlp.rules]]
name = "codename"
keywords = ["BLUEBIRD"]
action = "monitor"

[audit]
path = "{audit}"
"#,
        directory = Directory::role(
            "dev",
            &[
                "chat",
                "models:list",
                "agents:run",
                "embeddings",
                "passthrough"
            ],
            &["mock-*"]
        )
        .agents(&["*"])
        .key_with(
            "alice-key",
            DEMO_KEY,
            "rate_limit = { requests_per_minute = 6, burst = 6 }"
        )
        .filters(&["auth", "rate_limit", "dlp", "audit"])
        .toml(),
        audit = dir.join("audit.jsonl").display()
    )
}

/// The series of a scrape (`name{labels}`, without values), and the families it declares.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

fn has_series(text: &str, name: &str, labels: &[&str]) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|f| l.contains(f)))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

#[test]
fn a_fresh_gateway_exports_every_family_and_configured_series_at_zero() {
    let dir = tempdir();
    let gw = start(&full_chain(dir.path(), free_port()));
    let text = metrics(&gw);
    let fams = families(&text);
    for f in FAMILIES {
        assert!(
            fams.contains(*f),
            "{f} missing from the first scrape:\n{text}"
        );
    }
    for model in ["mock-echo", "mock-second", "mock-down"] {
        let m = format!("model=\"{model}\"");
        assert!(
            has_series(&text, "sluice_time_to_first_token_seconds_count", &[&m]),
            "ttft {model}"
        );
        for outcome in ["ok", "rate_limited", "dlp_blocked", "upstream_error"] {
            let o = format!("outcome=\"{outcome}\"");
            assert!(
                has_series(
                    &text,
                    "sluice_requests_total",
                    &["route=\"chat_completions\"", &m, &o]
                ),
                "requests {model} {outcome}"
            );
        }
        for kind in ["prompt", "completion"] {
            let k = format!("kind=\"{kind}\"");
            assert!(
                has_series(&text, "sluice_tokens_total", &[&m, "org=\"acme\"", &k]),
                "tokens {model}"
            );
        }
    }
    for upstream in ["mock", "down"] {
        let u = format!("upstream=\"{upstream}\"");
        assert!(has_series(
            &text,
            "sluice_upstream_duration_seconds_count",
            &[&u]
        ));
        for kind in ["timeout", "connect", "tls", "mid_stream", "reset"] {
            let k = format!("kind=\"{kind}\"");
            assert!(
                has_series(&text, "sluice_upstream_errors_total", &[&u, &k]),
                "{upstream} {kind}"
            );
        }
    }
    for route in sluice::filters::Route::all() {
        let r = format!("route=\"{}\"", route.label());
        assert!(
            has_series(&text, "sluice_request_duration_seconds_count", &[&r]),
            "{r}"
        );
        assert!(
            has_series(
                &text,
                "sluice_requests_total",
                &[&r, "outcome=\"denied_auth\""]
            ),
            "{r}"
        );
    }
    for level in ["org", "user", "key"] {
        assert!(has_series(
            &text,
            "sluice_rate_limited_total",
            &[&format!("level=\"{level}\"")]
        ));
    }
    for (detector, dir, action) in [
        ("aws_access_key", "request", "block"),
        ("email", "response", "redact"),
        ("codename", "request", "monitor"),
        ("unscannable_body", "response", "block"),
    ] {
        let labels = [
            format!("detector=\"{detector}\""),
            format!("direction=\"{dir}\""),
            format!("action=\"{action}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert!(
            has_series(&text, "sluice_dlp_findings_total", &labels),
            "{labels:?}"
        );
    }
    assert!(has_series(
        &text,
        "sluice_agent_runs_total",
        &["agent=\"daily-scan\"", "status=\"completed\""]
    ));
    // Everything pre-initialised is at zero.
    assert_eq!(metric_sum(&text, "sluice_requests_total", &[]), 0.0);
    assert_eq!(metric_sum(&text, "sluice_upstream_errors_total", &[]), 0.0);
    assert_eq!(metric_sum(&text, "sluice_dlp_findings_total", &[]), 0.0);
}

/// The first answer of each common kind increments a series that the first scrape already
/// had: none of them creates a new series, so `rate()` and `increase()` see each.
#[test]
fn first_events_land_on_series_that_already_existed() {
    let dir = tempdir();
    let gw = start(&full_chain(dir.path(), free_port()));
    let before = series(&metrics(&gw));
    let c = client();
    let chat = |body: &Value, key: Option<&str>| {
        let mut r = c.post(url(&gw, "/v1/chat/completions")).json(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let resp = r.send().unwrap_or_else(|e| panic!("{e}"));
        let status = resp.status().as_u16();
        let _ = resp.text();
        status
    };
    assert_eq!(chat(&chat_body("hi", false), None), 401);
    assert_eq!(chat(&chat_body("hi", false), Some(DEMO_KEY)), 200);
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&chat_body("streamed words", true))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, _, done) = collect_stream(r);
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(
        chat(
            &chat_body("key AKIAIOSFODNN7EXAMPLE here", false),
            Some(DEMO_KEY)
        ),
        400
    );
    let mut down = chat_body("hi", false);
    down["model"] = json!("mock-down");
    assert_eq!(chat(&down, Some(DEMO_KEY)), 502);
    let mut unknown = chat_body("hi", false);
    unknown["model"] = json!("no-such-model");
    assert_eq!(chat(&unknown, Some(DEMO_KEY)), 404);
    let bad = c
        .post(url(&gw, "/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(chat(&chat_body("BLUEBIRD", false), Some(DEMO_KEY)), 200);
    let mut sent = 8;
    // The key allows 6 requests a minute: one of the next ones is refused.
    loop {
        sent += 1;
        match chat(&chat_body("hi", false), Some(DEMO_KEY)) {
            429 => break,
            200 if sent < 16 => {}
            s => panic!("expected 429 from the key's limit, got {s}"),
        }
    }
    let after = wait_metric(&gw, "sluice_requests_total", &[], f64::from(sent));
    assert!(
        metric_sum(
            &after,
            "sluice_upstream_errors_total",
            &["upstream=\"down\""]
        ) >= 1.0
    );
    assert!(metric_sum(&after, "sluice_dlp_findings_total", &["codename"]) >= 1.0);
    let after = series(&after);
    let grown: Vec<&String> = after
        .difference(&before)
        .filter(|s| s.starts_with("sluice_"))
        .collect();
    assert!(
        grown.is_empty(),
        "series that appeared only with their first event: {grown:#?}"
    );
}

#[test]
fn a_reload_adds_the_series_of_newly_configured_values() {
    let dir = tempdir();
    let closed = free_port();
    let gw = start(&full_chain(dir.path(), closed));
    let next = format!(
        "{}{}\n[[upstreams]]\nname = \"later\"\nbuiltin = \"mock\"\n[[models]]\nname = \"mock-later\"\nupstream = \"later\"\n",
        server_section(),
        full_chain(dir.path(), closed)
    );
    let mut cfg = parse(&next);
    // The listeners cannot move on a reload: keep the running ones.
    cfg.server.listen = gw.listen_addr().to_string();
    cfg.server.admin_listen = gw.admin_addr().to_string();
    gw.reload_with(cfg)
        .unwrap_or_else(|e| panic!("reload: {e}"));
    let text = metrics(&gw);
    assert!(has_series(
        &text,
        "sluice_time_to_first_token_seconds_count",
        &["model=\"mock-later\""]
    ));
    assert!(has_series(
        &text,
        "sluice_upstream_errors_total",
        &["upstream=\"later\"", "kind=\"connect\""]
    ));
    assert!(has_series(
        &text,
        "sluice_tokens_total",
        &["model=\"mock-later\"", "org=\"acme\""]
    ));
    assert!(has_series(
        &text,
        "sluice_config_reloads_total",
        &["result=\"ok\""]
    ));
}

/// The metric names an expression uses (`sluice_…` identifiers), histogram suffixes removed
/// when the family is a histogram.
fn names_in(expr: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(k) = expr[i..].find("sluice_") {
        let start = i + k;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn read(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `expr` of the dashboard's panels (targets of rows' panels included).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|x| dashboard_exprs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_exported_metrics() {
    let dir = tempdir();
    let gw = start(&full_chain(dir.path(), free_port()));
    let exported = families(&metrics(&gw));

    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/sluice.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/sluice.json is not JSON: {e}"));
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    let mut used: BTreeSet<String> = exprs.iter().flat_map(|e| names_in(e, &exported)).collect();
    let rules = read("deploy/prometheus/alerts.yml");
    assert!(rules.matches("- alert:").count() >= 5, "alert rules");
    assert!(
        rules.matches("runbook:").count() >= rules.matches("- alert:").count(),
        "each alert has a runbook"
    );
    // Comments may name metrics that are not exported.
    let rule_lines: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    used.extend(names_in(&rule_lines.join("\n"), &exported));
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(unknown.is_empty(), "used but not exported: {unknown:?}");
    for needed in [
        "sluice_requests_total",
        "sluice_time_to_first_token_seconds",
        "sluice_audit_queue_depth",
    ] {
        assert!(
            used.contains(needed),
            "{needed} is not on the dashboard or in the rules"
        );
    }
    panels_are_laid_out(&dashboard["panels"]);
    promql_parses(&exprs);
}

/// Each panel has a unique id, a data source and a place of its own on the 24-column grid.
fn panels_are_laid_out(panels: &Value) {
    let panels = panels.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(ids.insert(p["id"].as_u64()), "duplicate panel id: {title}");
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or(u64::MAX));
        assert!(x + w <= 24 && h > 0 && h < 100, "{title}: gridPos {g}");
        for (cx, cy) in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
        }
        if p["type"] != "row" {
            assert!(p["datasource"]["uid"].is_string(), "{title}: data source");
            for t in p["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                assert!(
                    t["refId"].is_string() && t["expr"].is_string(),
                    "{title}: target {t}"
                );
            }
        }
    }
}

/// The dashboard's queries are valid PromQL: `promtool check rules` on a file with each as a
/// recording rule (Grafana's variables replaced). Skipped, saying so, without promtool
/// (`scripts/setup.sh` installs it).
fn promql_parses(exprs: &[String]) {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("promtool not found: the dashboard's PromQL is not checked (scripts/setup.sh installs it)");
        return;
    };
    assert!(out.status.success());
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
                .replace("$model", ".*");
            json!({"record": format!("dashboard:query{i}"), "expr": e})
        })
        .collect();
    // JSON is YAML: no YAML writer needed.
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempdir();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, file.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "the dashboard has invalid PromQL:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
