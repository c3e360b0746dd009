//! What Sluice learns about upstreams and how it routes by it (SPEC §11): weights and
//! priorities over many requests, passive ejection with its doubling and its trial request,
//! `Retry-After`, the all-out case, active health checks, `/admin/upstreams`, the metrics from
//! the first scrape, and a reload that changes targets while a stream is in flight.

use crate::support::fleet::*;
use crate::support::*;
use serde_json::json;

/// `n` non-streamed requests for `m`; every one must succeed.
fn ok_requests(gw: &sluice::Gateway, n: usize) {
    for _ in 0..n {
        let resp = send_chat(gw, &chat_request("m", false));
        assert_eq!(resp.status().as_u16(), 200);
    }
}

fn gauge(gw: &sluice::Gateway, upstream: &str) -> Option<f64> {
    let label = format!("upstream=\"{upstream}\"");
    let text = metrics(gw);
    let found = text
        .lines()
        .any(|l| l.starts_with("sluice_upstream_in_service{") && l.contains(&label));
    found.then(|| metric_sum(&text, "sluice_upstream_in_service", &[&label]))
}

#[test]
fn weights_split_traffic_and_a_lower_priority_serves_only_when_the_first_is_out() {
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    let cfg = format!(
        r#"{ups}
[[models]]
name = "m"
targets = [
  {{ upstream = "a", weight = 3 }},
  {{ upstream = "b", weight = 1 }},
  {{ upstream = "c", priority = 2 }},
]
[routing]
eject_after = 1
eject_seconds = 300
"#,
        ups = upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), ""), ("c", c.url(), "")])
    );
    let gw = start(&cfg);
    ok_requests(&gw, 400);
    let share = a.hits() as f64 / 400.0;
    assert!(
        (0.62..0.88).contains(&share),
        "a {} b {}",
        a.hits(),
        b.hits()
    );
    assert_eq!(a.hits() + b.hits(), 400);
    assert_eq!(
        c.hits(),
        0,
        "priority 2 is not used while priority 1 serves"
    );

    // Priority 1 dies: its two targets are tried, fail, are ejected; then c serves alone.
    a.kill();
    b.kill();
    ok_requests(&gw, 50);
    assert!(c.hits() == 50, "c {}", c.hits());
    for name in ["a", "b"] {
        let s = upstream_state(&gw, name);
        assert_eq!(
            (s["in_service"].clone(), s["why"].clone()),
            (json!(false), json!("ejected")),
            "{s}"
        );
        assert_eq!(gauge(&gw, name), Some(0.0));
    }
    assert_eq!(gauge(&gw, "c"), Some(1.0));
    let text = metrics(&gw);
    let refused = metric_sum(
        &text,
        "sluice_upstream_attempts_total",
        &["result=\"connect\""],
    );
    assert!(
        (1.0..=2.0).contains(&refused),
        "each dead target failed once: {refused}"
    );
}

#[test]
fn ejection_doubles_and_a_trial_request_brings_a_target_back() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.set(Mode::Status(500, None));
    let cfg = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}, {{ upstream = \"b\", priority = 2 }}]\n[routing]\nretries = 1\neject_after = 2\neject_seconds = 1\n",
        upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), "")])
    );
    let gw = start(&cfg);
    ok_requests(&gw, 2);
    assert_eq!((a.hits(), b.hits()), (2, 2));
    let s = upstream_state(&gw, "a");
    assert_eq!(s["state"], "out", "{s}");
    assert_eq!(s["why"], "ejected");
    assert_eq!(s["consecutive_failures"], 2);
    assert_eq!(s["ejections"], 1);
    assert!(
        s["out_until"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{s}"
    );
    assert!(
        s["detail"]
            .as_str()
            .is_some_and(|d| d.contains("out for 1 s") && d.contains("5xx")),
        "{s}"
    );
    // Out: requests go straight to b.
    ok_requests(&gw, 3);
    assert_eq!((a.hits(), b.hits()), (2, 5));

    // The ejection ends; the next request is a's trial. It fails: out again, twice as long.
    wait_upstream(&gw, "a", |s| s["state"] == "awaiting_trial");
    assert_eq!(
        gauge(&gw, "a"),
        Some(0.0),
        "not in service until its trial passes"
    );
    ok_requests(&gw, 1);
    assert_eq!(a.hits(), 3);
    let s = upstream_state(&gw, "a");
    assert_eq!(
        (s["state"].clone(), s["ejections"].clone()),
        (json!("out"), json!(2)),
        "{s}"
    );
    assert!(
        s["detail"]
            .as_str()
            .is_some_and(|d| d.contains("out for 2 s")),
        "{s}"
    );

    // Healthy again: the next trial passes and a serves (it is priority 1).
    a.set(Mode::Ok);
    wait_upstream(&gw, "a", |s| s["state"] == "awaiting_trial");
    let resp = send_chat(&gw, &chat_request("m", false));
    assert_eq!(answer_text(&json_of(resp)), "from a");
    let s = upstream_state(&gw, "a");
    assert_eq!(
        (s["in_service"].clone(), s["consecutive_failures"].clone()),
        (json!(true), json!(0)),
        "{s}"
    );
    assert_eq!(gauge(&gw, "a"), Some(1.0));
    ok_requests(&gw, 5);
    assert_eq!(a.hits(), 9);
}

#[test]
fn retry_after_takes_a_target_out_and_when_all_are_out_the_soonest_back_is_tried() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.set(Mode::Status(429, Some(120)));
    let cfg = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}, {{ upstream = \"b\", priority = 2 }}]\n[routing]\neject_after = 0\n",
        upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), "")])
    );
    let gw = start(&cfg);
    let resp = send_chat(&gw, &chat_request("m", false));
    assert_eq!(answer_text(&json_of(resp)), "from b");
    ok_requests(&gw, 3);
    assert_eq!(
        (a.hits(), b.hits()),
        (1, 4),
        "a is left alone while its Retry-After runs"
    );
    let s = upstream_state(&gw, "a");
    assert_eq!(s["why"], "retry_after", "{s}");
    assert!(
        s["detail"]
            .as_str()
            .is_some_and(|d| d.contains("429") && d.contains("Retry-After: 120")),
        "{s}"
    );
    assert_eq!(gauge(&gw, "a"), Some(0.0));
    wait_metric(
        &gw,
        "sluice_upstream_attempts_total",
        &["upstream=\"a\"", "result=\"429\""],
        1.0,
    );

    // b goes out for 5 s: every target is out, and b is due back first.
    b.set(Mode::Status(503, Some(5)));
    let resp = send_chat(&gw, &chat_request("m", false));
    assert_eq!(resp.status().as_u16(), 503);
    for _ in 0..3 {
        let resp = send_chat(&gw, &chat_request("m", false));
        assert_eq!(
            resp.status().as_u16(),
            503,
            "b's answer, untried a left alone"
        );
    }
    assert_eq!((a.hits(), b.hits()), (1, 8));
    assert_eq!(upstream_state(&gw, "b")["why"], "retry_after");
}

#[test]
fn an_active_health_check_takes_a_target_out_and_back() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.set_health(503);
    let cfg = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}, {{ upstream = \"b\", priority = 2 }}]\n",
        upstreams_toml(&[
            ("a", a.url(), "health_check = { path = \"/health\", interval_ms = 100, timeout_ms = 100 }"),
            ("b", b.url(), ""),
        ])
    );
    let gw = start(&cfg);
    let s = wait_upstream(&gw, "a", |s| s["why"] == "health_check");
    assert_eq!(s["health_check"]["passing"], false, "{s}");
    assert_eq!(s["health_check"]["path"], "/health");
    assert!(
        s["detail"].as_str().is_some_and(|d| d.contains("503")),
        "{s}"
    );
    ok_requests(&gw, 5);
    assert_eq!(
        (a.hits(), b.hits()),
        (0, 5),
        "a is out while its check fails"
    );
    assert_eq!(gauge(&gw, "a"), Some(0.0));

    a.set_health(200);
    let s = wait_upstream(&gw, "a", |s| s["in_service"] == true);
    assert_eq!(s["health_check"]["passing"], true, "{s}");
    ok_requests(&gw, 5);
    assert_eq!(a.hits(), 5);
    assert!(a.health_hits() >= 2);
    assert_eq!(b.health_hits(), 0, "b has no health check");
}

#[test]
fn admin_upstreams_and_the_metrics_exist_before_the_first_request() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let cfg = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\", upstream_model = \"big\", weight = 3 }}, {{ upstream = \"b\", priority = 2 }}]\n[[models]]\nname = \"short\"\nupstream = \"b\"\nupstream_model = \"small\"\n",
        upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), "")])
    );
    let gw = start(&cfg);
    let text = metrics(&gw);
    for up in ["a", "b"] {
        assert_eq!(gauge(&gw, up), Some(1.0), "{text}");
        for result in [
            "ok",
            "5xx",
            "429",
            "connect",
            "tls",
            "timeout",
            "reset",
            "mid_stream",
            "aborted",
        ] {
            let line = format!(
                "sluice_upstream_attempts_total{{result=\"{result}\",upstream=\"{up}\"}} 0"
            );
            assert!(text.contains(&line), "{line} missing");
        }
    }
    let v = admin_upstreams(&gw);
    assert_eq!(v["routing"]["retries"], 2, "{v}");
    assert_eq!(v["routing"]["eject_after"], 3);
    let a_state = upstream_state(&gw, "a");
    assert_eq!(a_state["state"], "in_service");
    assert_eq!(a_state["in_flight"], 0);
    assert_eq!(a_state["consecutive_failures"], 0);
    assert_eq!(a_state["models"], json!(["m"]));
    assert_eq!(upstream_state(&gw, "b")["models"], json!(["m", "short"]));
    assert_eq!(
        v["models"][0]["targets"],
        json!([{"upstream": "a", "upstream_model": "big", "weight": 3, "priority": 1},
               {"upstream": "b", "upstream_model": null, "weight": 1, "priority": 2}])
    );
    assert_eq!(
        v["models"][1]["targets"],
        json!([{"upstream": "b", "upstream_model": "small", "weight": 1, "priority": 1}])
    );
    // Read-only, on the admin listener only.
    let public = client()
        .get(url(&gw, "/admin/upstreams"))
        .send()
        .map(|r| r.status().as_u16());
    assert_ne!(public.unwrap_or(0), 200);

    // In flight: a request b hangs on is counted while it waits.
    b.set(Mode::Hang);
    let gw_url = url(&gw, "/v1/chat/completions");
    let waiting = std::thread::spawn(move || {
        client()
            .post(gw_url)
            .json(&chat_request("short", false))
            .send()
            .map(|r| r.status().as_u16())
    });
    let s = wait_upstream(&gw, "b", |s| s["in_flight"] == 1);
    assert_eq!(s["in_service"], true);
    b.set(Mode::Ok);
    assert_eq!(waiting.join().ok().and_then(|r| r.ok()), Some(200));
    wait_upstream(&gw, "b", |s| s["in_flight"] == 0);
}

#[test]
fn a_reload_that_changes_targets_keeps_the_stream_in_flight_and_what_was_learnt() {
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    a.set(Mode::Slow(100));
    b.set(Mode::Status(500, None));
    let model_n = "[[models]]\nname = \"n\"\nupstream = \"b\"\n";
    let before = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}]\n{model_n}",
        upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), ""), ("c", c.url(), "")])
    );
    let gw = start(&before);
    // b fails once: one failure in a row, kept across the reload.
    assert_eq!(
        send_chat(&gw, &chat_request("n", false)).status().as_u16(),
        500
    );
    wait_upstream(&gw, "b", |s| s["consecutive_failures"] == 1);

    let resp = send_chat(&gw, &chat_request("m", true));
    assert_eq!(resp.status().as_u16(), 200);
    let mut events = Events::new(resp);
    let first = events.next_data().unwrap_or_default();
    assert!(first.contains("chat.completion.chunk"), "{first}");

    // m now goes to c, and a is no longer configured at all.
    let after = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"c\", upstream_model = \"cm\" }}, {{ upstream = \"b\", priority = 2 }}]\n{model_n}",
        upstreams_toml(&[("b", b.url(), ""), ("c", c.url(), "")])
    );
    gw.reload_with(parse(&format!("{}{after}", server_section_of(&gw))))
        .unwrap_or_else(|e| panic!("reload: {e}"));
    let resp = send_chat(&gw, &chat_request("m", false));
    let v = json_of(resp);
    assert_eq!(
        (answer_text(&v), v["model"].clone()),
        ("from c".to_string(), json!("cm"))
    );

    // The stream in flight finishes from a, whole.
    let mut rest = String::new();
    while let Some(d) = events.next_data() {
        rest.push_str(&d);
        rest.push('\n');
    }
    assert!(
        rest.contains(" w9") && rest.trim_end().ends_with("[DONE]"),
        "{rest}"
    );
    assert_eq!(a.hits(), 1);
    let s = upstream_state(&gw, "b");
    assert_eq!(s["consecutive_failures"], 1, "b's state carried over: {s}");
    assert!(admin_upstreams(&gw)["data"]
        .as_array()
        .is_some_and(|d| d.len() == 2));
    assert_eq!(gauge(&gw, "a"), None, "a removed upstream leaves the gauge");
}

/// The `[server]` section a running gateway was started with (its ports).
fn server_section_of(gw: &sluice::Gateway) -> String {
    format!(
        "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\nthreads = 2\nshutdown_grace_seconds = 5\n",
        gw.listen_addr(),
        gw.admin_addr()
    )
}
