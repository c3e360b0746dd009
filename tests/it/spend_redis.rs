//! Budgets shared by two gateways through the rate limiter's Redis (SPEC §15): each gateway has
//! its own SQLite store, a real `redis-server` holds the reservations and the period's spend, so
//! together they enforce one budget. Redis down: `on_backend_error = "allow"` falls back to each
//! gateway's own ledger, `"deny"` refuses with `503 rate_limit_unavailable`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::redis_server::RedisServer;
use crate::support::{metric_sum, metrics, spend, start};
use serde_json::Value;
use sluice::Gateway;
use spend::{chat, config, fire, header, reservation, spent, usage, words, Env, ALICE};

/// A gateway with its own SQLite store and audit file in `env`, budgets in Redis at `url`.
fn gateway(env: &Env, name: &str, url: &str, budget: &str, on_error: &str) -> Gateway {
    let dir = env.dir.path();
    let store = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let audit = dir.join(format!("{name}.jsonl")).display().to_string();
    start(&format!(
        "{}\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout_ms = 2000\n\
         redis_connect_timeout_ms = 2000\non_backend_error = \"{on_error}\"\n",
        config(&store, &audit, budget)
    ))
}

fn base(gw: &Gateway) -> String {
    format!("http://{}", gw.listen_addr())
}

/// Both gateways' spend on their own stores, once every settlement has been written.
fn total_spent(bases: &[String], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total: f64 = bases.iter().map(|b| spent(&usage(b, ALICE))).sum();
        if total >= want || Instant::now() > deadline {
            return total;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn flush_redis(port: u16) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis");
    s.write_all(b"FLUSHALL\r\n").expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"+OK\r\n");
}

#[test]
fn two_instances_sharing_redis_hold_one_budget() {
    let redis = RedisServer::start();
    let env = Env::new();
    let budget = "{ usd = 400, period = \"daily\" }";
    let a = gateway(&env, "a", &redis.url(), budget, "allow");
    let b = gateway(&env, "b", &redis.url(), budget, "allow");
    let bases = [base(&a), base(&b)];
    let text = words(20);
    let reserved = reservation(&bases[0], &text, 20);
    assert!(
        reserved >= 40.0,
        "the worst case covers the cost: {reserved}"
    );

    let (answers, ok) = fire(&bases, &text, 50, "redis");
    let refused = answers.len() - ok;
    eprintln!("two instances on Redis: reservation ${reserved}; {ok} admitted, {refused} refused");
    assert!(ok >= 1, "the budget holds at least one request");
    // Each request costs $40; each instance's store holds its own. Each instance alone would
    // admit ⌊400 / reservation⌋ at once (14 together, $560); sharing one budget, they cannot
    // spend more than it (a request admitted after others settled may use what they left).
    let total = total_spent(&bases, 40.0 * ok as f64);
    assert_eq!(total, 40.0 * ok as f64);
    assert!(total <= 400.0, "spent ${total} of a $400 budget");
}

#[test]
fn the_second_instance_refuses_once_the_first_spent_the_budget() {
    let redis = RedisServer::start();
    let env = Env::new();
    let budget = "{ usd = 100, period = \"daily\" }";
    let a = gateway(&env, "a", &redis.url(), budget, "deny");
    let b = gateway(&env, "b", &redis.url(), budget, "deny");
    let text = words(20);
    let mut admitted = 0;
    loop {
        let r = chat(&base(&a), ALICE, "mock-echo", &text, 20, "on-a");
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => break,
            s => panic!("unexpected {s}"),
        }
        assert!(
            admitted <= 3,
            "a $100 budget holds at most 2 requests of $40"
        );
    }
    assert_eq!(admitted, 2);
    // `b` never served alice and its store holds no spend of hers, yet it refuses her.
    let bb = base(&b);
    assert_eq!(spent(&usage(&bb, ALICE)), 0.0);
    let r = chat(&bb, ALICE, "mock-echo", &text, 20, "on-b");
    assert_eq!(r.status().as_u16(), 429);
    assert!(header(&r, "retry-after").is_some());
    let v: Value = r.json().expect("json");
    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("$80.000000 is spent"),
        "{v}"
    );

    // Redis forgets everything: the counter is re-created from the spend of the first instance
    // that touches it, from its own store. `a` spent it all, so `a` still refuses.
    flush_redis(redis.port);
    let r = chat(&base(&a), ALICE, "mock-echo", &text, 20, "after-flush");
    assert_eq!(
        r.status().as_u16(),
        429,
        "a flush does not forget a's own spend"
    );
}

#[test]
fn redis_down_falls_back_to_the_local_ledger_or_refuses() {
    let env = Env::new();
    // Nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        format!("redis://127.0.0.1:{}", l.local_addr().expect("addr").port())
    };
    let budget = "{ usd = 100, period = \"daily\" }";
    let allow = gateway(&env, "allow", &dead, budget, "allow");
    let text = words(20);
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            chat(
                &base(&allow),
                ALICE,
                "mock-echo",
                &text,
                20,
                &format!("d{i}"),
            )
            .status()
            .as_u16()
        })
        .collect();
    // The budget is still held, by this instance's own ledger, and each fallback is counted.
    assert_eq!(statuses, [200, 200, 429]);
    let m = metrics(&allow);
    let errors = metric_sum(
        &m,
        "sluice_rate_limit_backend_errors_total",
        &["op=\"check\""],
    );
    assert!(errors >= 3.0, "{errors} reservations fell back: {m}");

    let deny = gateway(&env, "deny", &dead, budget, "deny");
    let r = chat(&base(&deny), ALICE, "mock-echo", &text, 20, "denied");
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().expect("json");
    assert_eq!(v["error"]["code"], "rate_limit_unavailable", "{v}");
}
