//! The audit trail through real gateways: one record per request for every outcome, found by
//! `x-request-id`; usage for streamed and non-streamed calls; no key and no body in records;
//! durability under SIGKILL (`fsync = "always"`) and SIGTERM under load; `sluice audit verify`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::process::SluiceProcess;
use crate::support::*;
use async_trait::async_trait;
use serde_json::{json, Value};
use sluice::filters::{ConfigErrors, Cx, Filter, Policy, Reply, RequestHead, Shared, Verdict};

const ALICE: &str = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEalice";
const LIMITED: &str = "sk-sluice-LIMITEDlimitedLIMITEDlimitedLIMITEDlimi";

fn policy(audit_path: &Path, fsync: &str, extra_filters: &str) -> String {
    format!(
        r#"{MOCK}
[[upstreams]]
name = "dead"
url = "http://127.0.0.1:{dead}"
[[models]]
name = "dead-model"
upstream = "dead"
[[models]]
name = "forbidden-model"
upstream = "mock"

{directory}
[audit]
path = "{path}"
fsync = "{fsync}"

{extra_filters}
[[filters]]
type = "auth"
[[filters]]
type = "rate_limit"
[[filters]]
type = "dlp"
[[filters]]
type = "audit"
"#,
        dead = free_port(),
        directory = Directory::role(
            "analyst",
            &["chat", "models:list", "agents:run"],
            &["mock-*", "dead-*"]
        )
        .agents(&["*"])
        .key("alice-key", ALICE)
        .key_with(
            "limited-key",
            LIMITED,
            "rate_limit = { requests_per_minute = 1 }"
        )
        .toml(),
        path = audit_path.display(),
    )
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn record_for(path: &Path, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = records(path)
            .into_iter()
            .filter(|r| r["request_id"] == id)
            .collect();
        if found.len() == 1 {
            return found[0].clone();
        }
        assert!(found.len() <= 1, "one record per request, got {found:?}");
        assert!(
            Instant::now() < deadline,
            "no record for {id} in {:?}",
            records(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(files: &[&Path]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A filter that fails with 500 on demand (`x-fail: 1`), to produce an internal_error record.
struct Failer;

#[async_trait]
impl Filter for Failer {
    fn name(&self) -> &str {
        "failer"
    }
    async fn on_request_head(&self, head: &RequestHead<'_>, _cx: &mut Cx) -> Verdict {
        if head.headers.contains_key("x-fail") {
            return Reply::error(500, "internal_error", "failing on purpose").into();
        }
        Verdict::Continue
    }
}

fn send(
    gw: &sluice::Gateway,
    id: &str,
    key: Option<&str>,
    body: Value,
    headers: &[(&str, &str)],
) -> u16 {
    let mut req = client()
        .post(url(gw, "/v1/chat/completions"))
        .header("x-request-id", id)
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let r = req.send().unwrap_or_else(|e| panic!("{e}"));
    let status = r.status().as_u16();
    let _ = r.bytes();
    status
}

#[test]
fn every_outcome_has_exactly_one_record() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("audit.jsonl");
    let builder = sluice::GatewayBuilder::new().filter_type(
        "failer",
        |_: &Policy<'_>,
         _: &toml::Table,
         _: &str,
         _: &Shared|
         -> Result<Arc<dyn Filter>, ConfigErrors> { Ok(Arc::new(Failer)) },
    );
    let gw = start_with(
        builder,
        &policy(&log, "interval", "[[filters]]\ntype = \"failer\"\n"),
    );
    let chat = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "count these four words"}]});

    assert_eq!(
        send(
            &gw,
            "r-ok",
            Some(ALICE),
            chat("mock-echo"),
            &[("user-agent", "audit-test/1")]
        ),
        200
    );
    let mut streamed = chat("mock-echo");
    streamed["stream"] = json!(true);
    assert_eq!(send(&gw, "r-stream", Some(ALICE), streamed, &[]), 200);
    assert_eq!(send(&gw, "r-noauth", None, chat("mock-echo"), &[]), 401);
    assert_eq!(
        send(
            &gw,
            "r-forbidden",
            Some(ALICE),
            chat("forbidden-model"),
            &[]
        ),
        403
    );
    assert_eq!(
        send(&gw, "r-limit-1", Some(LIMITED), chat("mock-echo"), &[]),
        200
    );
    assert_eq!(
        send(&gw, "r-limited", Some(LIMITED), chat("mock-echo"), &[]),
        429
    );
    assert_eq!(
        send(&gw, "r-bad", Some(ALICE), json!({"messages": []}), &[]),
        400
    );
    assert_eq!(
        send(&gw, "r-upstream", Some(ALICE), chat("dead-model"), &[]),
        502
    );
    assert_eq!(
        send(
            &gw,
            "r-internal",
            Some(ALICE),
            chat("mock-echo"),
            &[("x-fail", "1")]
        ),
        500
    );
    let leak = json!({"model": "mock-echo", "messages": [{"role": "user", "content": "AKIAIOSFODNN7EXAMPLE"}]});
    assert_eq!(send(&gw, "r-dlp", Some(ALICE), leak, &[]), 400);

    // The client goes away mid-stream.
    let mut slow = chat("mock-echo");
    slow["stream"] = json!(true);
    let resp = client()
        .post(url(&gw, "/v1/chat/completions"))
        .bearer_auth(ALICE)
        .header("x-request-id", "r-closed")
        .header("x-mock-chunk-delay-ms", "300")
        .json(&slow)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut first = [0u8; 64];
    let _ = resp.take(64).read(&mut first);
    // `resp` was moved into take(): dropping it here closes the connection.
    std::thread::sleep(Duration::from_millis(1500));

    let ok = record_for(&log, "r-ok");
    assert_eq!(ok["outcome"], "ok");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["key_id"], "alice-key");
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["org"], "acme");
    assert_eq!(ok["role"], "analyst");
    assert_eq!(ok["model"], "mock-echo");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/v1/chat/completions");
    assert_eq!(ok["stream"], false);
    assert_eq!(ok["user_agent"], "audit-test/1");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(
        ok["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4})
    );
    assert!(ok["latency_ms"].is_u64() && ok["upstream_ms"].is_u64());
    assert!(ok["ts"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.contains('.')));
    let st = record_for(&log, "r-stream");
    assert_eq!(st["stream"], true);
    assert_eq!(
        st["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4})
    );
    for (id, outcome, status) in [
        ("r-noauth", "denied_auth", 401),
        ("r-forbidden", "denied_permission", 403),
        ("r-limited", "rate_limited", 429),
        ("r-bad", "bad_request", 400),
        ("r-upstream", "upstream_error", 502),
        ("r-internal", "internal_error", 500),
        ("r-dlp", "dlp_blocked", 400),
    ] {
        let r = record_for(&log, id);
        assert_eq!(r["outcome"], outcome, "{id}: {r}");
        assert_eq!(r["status"], status, "{id}: {r}");
    }
    assert!(record_for(&log, "r-noauth").get("key_id").is_none());
    assert_eq!(record_for(&log, "r-closed")["outcome"], "client_closed");
    assert_eq!(
        record_for(&log, "r-dlp")["dlp"],
        json!([{"detector": "aws_access_key", "direction": "request", "action": "block", "count": 1}])
    );

    drop(gw);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("sk-sluice-"), "no key in the trail");
    assert!(
        !text.contains("count these four words"),
        "no body in the trail"
    );
    let (code, out) = verify(&[&log]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok:"), "{out}");
}

#[test]
fn verify_reports_edits_deletions_and_reorders() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("audit.jsonl");
    let gw = start(&policy(&log, "interval", ""));
    for i in 0..5 {
        send(
            &gw,
            &format!("v-{i}"),
            Some(ALICE),
            json!({"model": "mock-echo", "messages": [{"role": "user", "content": "x"}]}),
            &[],
        );
    }
    drop(gw);
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 5);
    let write = |name: &str, ls: &[String]| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, ls.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
        p
    };
    let mut edited = lines.clone();
    edited[2] = edited[2].replace("\"status\":200", "\"status\":201");
    let mut deleted = lines.clone();
    deleted.remove(1);
    let mut swapped = lines.clone();
    swapped.swap(1, 3);
    for (name, ls, line) in [
        ("edited", edited, "3"),
        ("deleted", deleted, "2"),
        ("swapped", swapped, "2"),
    ] {
        let p = write(name, &ls);
        let (code, out) = verify(&[&p]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.contains(&format!(":{line}")),
            "{name} names line {line}: {out}"
        );
    }
    let (code, out) = verify(&[&write("intact", &lines)]);
    assert_eq!(code, 0, "{out}");
}

fn spawn_sluice(config: &str, dir: &Path) -> SluiceProcess {
    SluiceProcess::run_in(dir, "shutdown_grace_seconds = 20", config)
}

fn post(listen: &str, id: &str) -> Option<u16> {
    client()
        .post(format!("http://{listen}/v1/chat/completions"))
        .bearer_auth(ALICE)
        .header("x-request-id", id)
        .json(&json!({"model": "mock-echo", "messages": [{"role": "user", "content": "durable"}]}))
        .send()
        .ok()
        .and_then(|r| {
            let s = r.status().as_u16();
            r.bytes().ok().map(|_| s)
        })
}

#[test]
fn fsync_always_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("audit.jsonl");
    let mut p = spawn_sluice(&policy(&log, "always", ""), dir.path());
    let mut answered = Vec::new();
    for i in 0..20 {
        let id = format!("k-{i}");
        if post(&p.listen(), &id) == Some(200) {
            answered.push(id);
        }
    }
    // Killed right after the last complete response: no flush, no shutdown.
    p.kill();
    assert_eq!(answered.len(), 20);
    let recs = records(&log);
    for id in &answered {
        assert!(
            recs.iter().any(|r| r["request_id"] == *id),
            "{id} answered but not durable"
        );
    }
    let (code, out) = verify(&[&log]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn sigterm_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("audit.jsonl");
    let mut p = spawn_sluice(&policy(&log, "interval", ""), dir.path());
    let listen = p.listen();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let listen = listen.clone();
            std::thread::spawn(move || {
                let mut ok = Vec::new();
                for i in 0..200 {
                    let id = format!("t-{w}-{i}");
                    match post(&listen, &id) {
                        Some(200) => ok.push(id),
                        Some(_) => {}
                        None => break,
                    }
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let pid = p.pid() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let answered: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    let status = p.wait();
    assert_eq!(status.code(), Some(0), "exit 0 after draining");
    assert!(!answered.is_empty());
    let recs = records(&log);
    for id in &answered {
        assert!(
            recs.iter().any(|r| r["request_id"] == *id),
            "{id} answered but lost"
        );
    }
    let (code, out) = verify(&[&log]);
    assert_eq!(code, 0, "{out}");
}
