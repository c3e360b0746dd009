//! Faults of what Sluice depends on, made for real on loopback (issue 29): upstream processes
//! killed and restarted under load, Redis killed mid-traffic, PostgreSQL stopped. Each test is
//! bounded; the audit disk's faults are in `faults_audit.rs`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::support::{keys, postgres, redis_server};
use serde_json::{json, Value};

/// A `sluice mock` subprocess on a fixed port, which the test kills and starts again.
struct Mock {
    port: u16,
    child: Option<Child>,
}

impl Mock {
    fn start(port: u16) -> Mock {
        let mut m = Mock { port, child: None };
        m.revive();
        m
    }

    fn revive(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["mock", "--listen", &format!("127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("sluice mock: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "sluice mock did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_flapping_target_costs_no_client_an_error() {
    let mut a = Mock::start(free_port());
    let mut b = Mock::start(free_port());
    // Default routing (retries 2, eject_after 3, eject_seconds 30).
    let gw = start(&format!(
        r#"
[[upstreams]]
name = "a"
url = "http://127.0.0.1:{}"
[[upstreams]]
name = "b"
url = "http://127.0.0.1:{}"
[[models]]
name = "flappy"
targets = [{{ upstream = "a", upstream_model = "echo" }}, {{ upstream = "b", upstream_model = "echo" }}]
"#,
        a.port, b.port
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, endpoint) = (stop.clone(), url(&gw, "/v1/chat/completions"));
            std::thread::spawn(move || {
                let (mut ok, mut errors) = (0u32, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let r = client()
                        .post(&endpoint)
                        .json(&json!({"model": "flappy", "messages": [{"role": "user", "content": "hi"}]}))
                        .send();
                    match r {
                        Ok(r) if r.status().as_u16() == 200 => ok += 1,
                        Ok(r) => errors.push(format!("{} {}", r.status(), r.text().unwrap_or_default())),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    // 12 s: every 2 s one target dies, and comes back a second later, alternately; one is
    // always serving. The restarted one is still ejected when the other dies.
    for round in 0..6 {
        let t = if round % 2 == 0 { &mut a } else { &mut b };
        t.kill();
        std::thread::sleep(Duration::from_secs(1));
        t.revive();
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut errors) = (0, Vec::new());
    for w in workers {
        let (o, e) = w.join().unwrap_or_default();
        ok += o;
        errors.extend(e);
    }
    eprintln!("flapping target: {ok} answered, {} errors", errors.len());
    assert!(ok > 0);
    assert!(errors.is_empty(), "client errors: {errors:?}");
}

#[test]
fn redis_away_falls_back_to_local_buckets_at_the_same_limit() {
    const KEY: &str = "sk-sluice-LIMITlimitLIMITlimitLIMITlimitLIMITlimit";
    let mut redis = redis_server::RedisServer::start();
    let port = redis.port;
    let directory = Directory::role("dev", &["chat"], &["mock-*"])
        .key_with("limited", KEY, "rate_limit = { requests_per_minute = 20 }")
        .filters(&["auth", "rate_limit"])
        .toml();
    let gw = start(&format!(
        r#"{MOCK}
{directory}
[rate_limit]
backend = "redis"
redis_url = "{redis_url}"
on_backend_error = "allow"
"#,
        redis_url = redis.url(),
    ));
    let call = || {
        client()
            .post(url(&gw, "/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat_body("hi", false))
            .send()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for i in 0..10 {
        assert_eq!(call().status().as_u16(), 200, "call {i} with Redis up");
    }
    redis.stop();
    for i in 10..20 {
        assert_eq!(call().status().as_u16(), 200, "call {i} with Redis away");
    }
    let r = call();
    assert_eq!(r.status().as_u16(), 429, "the 21st call of the minute");
    assert!(metric_sum(&metrics(&gw), "sluice_rate_limit_backend_errors_total", &[]) >= 1.0);

    // Redis back (empty): counted there again — its fresh bucket admits the next call, which
    // the local one (empty until the minute refills it) would refuse.
    let _redis = redis_server::RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call();
        if r.status().as_u16() == 200 {
            let left = r.headers().get("x-ratelimit-remaining-requests").cloned();
            assert_eq!(left.as_ref().and_then(|v| v.to_str().ok()), Some("19"));
            break;
        }
        assert!(Instant::now() < deadline, "Redis never used again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn key_changes_during_a_known_store_outage_fail_at_once() {
    let mut pg = postgres::PostgresServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let audit = dir.path().join("a.jsonl").display().to_string();
    // A long store timeout: a change that waited for it would take 20 s.
    let config = keys::config(&pg.url(), &audit, None).replace(
        "poll_interval_ms = 100",
        "poll_interval_ms = 100\ntimeout_ms = 20000",
    );
    let gw = start(&config);
    let (id, key) = keys::new_key(&gw, keys::ALICE);

    pg.stop();
    // On failure, say what the store loop did meanwhile (its sync errors count each poll that
    // failed; none means the poll did not run), and how long each look at the metrics took.
    let stopped = Instant::now();
    let mut first = None;
    let mut last;
    let down = loop {
        let t = Instant::now();
        let text = metrics(&gw);
        let store: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sluice_store"))
            .collect();
        last = format!(
            "+{:?} (read in {:?}): {store:?}",
            stopped.elapsed(),
            t.elapsed()
        );
        first.get_or_insert_with(|| last.clone());
        if metric_sum(&text, "sluice_store_up", &[]) == 0.0 {
            break true;
        }
        if stopped.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        down,
        "sluice_store_up still 1 after 10 s; first look {first:?}, last look {last}"
    );
    let t0 = Instant::now();
    let (status, v) = keys::create(&gw, keys::ALICE, json!({"name": "while down"}));
    let r = keys::revoke(&gw, keys::ALICE, &id);
    let took = t0.elapsed();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "store_unavailable");
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().unwrap_or_default();
    assert_eq!(v["error"]["code"], "store_unavailable");
    // Behaviour, with a wide margin: not the 20 s store timeout.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        keys::chat_status(&gw, &key),
        200,
        "issued keys keep working"
    );

    pg.resume();
    keys::eventually("changes work again once the store is back", || {
        keys::create(&gw, keys::ALICE, json!({"name": "after"})).0 == 201
    });
    eprintln!("two key changes during a known outage answered 503 in {took:?}");
}
