//! The filter: one record per request for every outcome, with the right fields and nothing
//! secret; the fsync-always path; 503 `audit_unavailable` when the log cannot be written;
//! shutdown flushes; metrics.

use crate::support::audit as audit_support;

use std::sync::Arc;
use std::time::Duration;

use audit_support::{cx, drive, exchange, find, identify, metric, records, usage, Config, TempDir};
use sluice_filters::audit::{self, AuditWriter, Fsync, OnError};
use sluice_filters::{Outcome, Verdict};

fn writer(shared: &sluice_filters::Shared) -> Arc<AuditWriter> {
    let all = shared.all::<AuditWriter>();
    assert_eq!(all.len(), 1);
    all[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_gets_one_record_with_its_fields() {
    let dir = TempDir::new("outcomes");
    let log = dir.join("audit.jsonl");
    let config = Config::new(&log, Fsync::Interval);
    let shared = audit_support::shared();
    let filter = config.build(&shared);

    let cases = [
        ("r-ok", 200, Outcome::Ok, true),
        ("r-denied-auth", 401, Outcome::DeniedAuth, false),
        ("r-denied-permission", 403, Outcome::DeniedPermission, true),
        ("r-rate-limited", 429, Outcome::RateLimited, true),
        ("r-dlp-blocked", 400, Outcome::DlpBlocked, true),
        ("r-bad-request", 400, Outcome::BadRequest, true),
        ("r-upstream-error", 502, Outcome::UpstreamError, true),
        ("r-client-closed", 0, Outcome::ClientClosed, true),
        ("r-internal-error", 500, Outcome::InternalError, true),
    ];
    for (id, status, outcome, authenticated) in cases {
        let mut c = cx(id);
        if authenticated {
            identify(&mut c);
        }
        if outcome == Outcome::DlpBlocked {
            c.record_dlp("aws_access_key", "request", "block", 2);
        }
        if outcome == Outcome::Ok {
            c.usage = usage(7, 3);
        }
        let verdict = drive(&*filter, &mut c, &exchange(status, outcome), status != 0).await;
        assert!(matches!(verdict, Verdict::Continue));
    }
    filter.shutdown().await;

    let recs = records(&log);
    assert_eq!(recs.len(), cases.len(), "one record per request");
    for (id, status, outcome, authenticated) in cases {
        let r = find(&recs, id);
        assert_eq!(r.outcome, outcome.as_str());
        assert_eq!(r.status, (status != 0).then_some(status), "{id}");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.model.as_deref(), Some("mock-echo"));
        assert_eq!(r.client_ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(r.user_agent.as_deref(), Some("OpenAI/Python 1.54.0"));
        assert_eq!(r.latency_ms, 12);
        assert_eq!(r.key_id.is_some(), authenticated, "{id}");
        if authenticated {
            assert_eq!(
                (
                    r.key_id.as_deref(),
                    r.user.as_deref(),
                    r.org.as_deref(),
                    r.role.as_deref()
                ),
                (
                    Some("alice-laptop"),
                    Some("alice"),
                    Some("acme"),
                    Some("analyst")
                )
            );
        }
        assert!(r.ts.ends_with('Z') && r.ts.len() == 24, "{}", r.ts);
    }
    let ok = find(&recs, "r-ok");
    assert_eq!(ok.upstream_ms, Some(9));
    assert_eq!(
        ok.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((7, 3))
    );
    let blocked = find(&recs, "r-dlp-blocked");
    assert_eq!(blocked.dlp.len(), 1);
    assert_eq!(
        (
            &*blocked.dlp[0].detector,
            &*blocked.dlp[0].direction,
            &*blocked.dlp[0].action,
            blocked.dlp[0].count
        ),
        ("aws_access_key", "request", "block", 2)
    );
    let r = audit::verify(std::slice::from_ref(&log));
    assert!(r.is_ok() && r.records == cases.len() as u64, "{r}");
    assert_eq!(
        metric(&shared, "sluice_audit_records_total", None),
        cases.len() as f64
    );
    assert_eq!(metric(&shared, "sluice_audit_queue_depth", None), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_calls_carry_usage_and_records_hold_no_secret() {
    let dir = TempDir::new("stream");
    let log = dir.join("audit.jsonl");
    let config = Config::new(&log, Fsync::Interval);
    let shared = audit_support::shared();
    let filter = config.build(&shared);

    let mut c = cx("r-stream");
    identify(&mut c);
    c.stream = true;
    c.usage = usage(11, 42);
    c.record_dlp("email", "response", "redact", 3);
    // What must never reach a record: the key, bodies, matched text. Cx carries none of them;
    // headers the engine saw are not part of a record either.
    drive(&*filter, &mut c, &exchange(200, Outcome::Ok), true).await;
    filter.shutdown().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let recs = records(&log);
    let r = find(&recs, "r-stream");
    assert!(r.stream);
    assert_eq!(
        r.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((11, 42))
    );
    assert_eq!(r.dlp[0].count, 3);
    assert!(!text.contains("sk-sluice"), "no key: {text}");
    assert!(!text.contains("messages"), "no body: {text}");
}

/// Under fsync = always the record is written in on_response_complete — durable by the time it
/// returns — and on_log does not write it again; a request that never completed is written by
/// on_log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_mode_writes_once_and_durably_before_the_response_completes() {
    let dir = TempDir::new("always");
    let log = dir.join("audit.jsonl");
    let config = Config::new(&log, Fsync::Always);
    let shared = audit_support::shared();
    let filter = config.build(&shared);

    let mut c = cx("r-complete");
    identify(&mut c);
    let ex = exchange(200, Outcome::Ok);
    let head = http::HeaderMap::new();
    let method = c.method.clone();
    let path = c.path.clone();
    let h = sluice_filters::RequestHead {
        method: &method,
        path: &path,
        headers: &head,
    };
    assert!(matches!(
        filter.on_request_head(&h, &mut c).await,
        Verdict::Continue
    ));
    assert_eq!(filter.on_response_complete(&ex, &c), Ok(()));
    // Before on_log and without any flush, the record is already in the file.
    assert_eq!(records(&log).len(), 1);
    c.response_completed = true;
    filter.on_log(&ex, &c).await;

    // Refused from the headers by an earlier filter: this filter's on_request_head never ran.
    let mut c = cx("r-refused-early");
    let ex = exchange(401, Outcome::DeniedAuth);
    assert_eq!(filter.on_response_complete(&ex, &c), Ok(()));
    assert_eq!(records(&log).len(), 2);
    c.response_completed = true;
    filter.on_log(&ex, &c).await;

    // The client went away: no complete response, written from on_log.
    let mut c = cx("r-gone");
    drive(&*filter, &mut c, &exchange(0, Outcome::ClientClosed), false).await;

    filter.shutdown().await;
    let recs = records(&log);
    assert_eq!(recs.len(), 3, "{recs:#?}");
    for id in ["r-complete", "r-refused-early", "r-gone"] {
        find(&recs, id);
    }
    assert_eq!(
        metric(
            &shared,
            "sluice_audit_write_errors_total",
            Some("durability_timeout")
        ),
        0.0
    );
}

/// on_response_complete runs synchronously; outside a multi-thread runtime it simply blocks.
#[test]
fn always_mode_works_on_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new("always-ct");
    let log = dir.join("audit.jsonl");
    let config = Config::new(&log, Fsync::Always);
    let shared = audit_support::shared();
    rt.block_on(async {
        let filter = config.build(&shared);
        let mut c = cx("r-ct");
        drive(&*filter, &mut c, &exchange(200, Outcome::Ok), true).await;
        assert_eq!(records(&log).len(), 1);
        filter.shutdown().await;
    });
    assert_eq!(records(&log).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_log_answers_503_until_it_can_be_written() {
    let dir = TempDir::new("unwritable");
    // The log's directory would have to be inside a regular file: ENOTDIR, even for root.
    std::fs::write(dir.join("blocker"), b"not a directory").unwrap();
    let log = dir.join("blocker/audit.jsonl");
    let config = Config::new(&log, Fsync::Always);
    let shared = audit_support::shared();
    let filter = config.build(&shared);
    let w = writer(&shared);
    assert!(!w.is_healthy());
    assert!(
        w.error().is_some_and(|e| e.contains("blocker")),
        "{:?}",
        w.error()
    );

    let mut c = cx("r-refused");
    let verdict = drive(
        &*filter,
        &mut c,
        &exchange(503, Outcome::InternalError),
        true,
    )
    .await;
    let Verdict::Respond(reply) = verdict else {
        panic!("served an unaudited call");
    };
    assert_eq!(reply.status, 503);
    assert_eq!(reply.code, Some("audit_unavailable"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(
        metric(
            &shared,
            "sluice_audit_write_errors_total",
            Some("unavailable")
        ) >= 1.0
    );
    assert!(metric(&shared, "sluice_audit_write_errors_total", Some("io")) >= 1.0);

    // The disk comes back: the writer notices on its own, and the refused request's record,
    // held meanwhile, is written.
    std::fs::remove_file(dir.join("blocker")).unwrap();
    audit_support::eventually("the writer recovers", || w.is_healthy());
    let mut c = cx("r-served");
    let verdict = drive(&*filter, &mut c, &exchange(200, Outcome::Ok), true).await;
    assert!(matches!(verdict, Verdict::Continue));
    filter.shutdown().await;
    let recs = records(&log);
    find(&recs, "r-refused");
    find(&recs, "r-served");
    assert!(audit::verify(&[log]).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_serves_and_counts() {
    let dir = TempDir::new("fail-open");
    std::fs::write(dir.join("blocker"), b"").unwrap();
    let log = dir.join("blocker/audit.jsonl");
    let mut config = Config::new(&log, Fsync::Interval);
    config.audit.on_error = OnError::FailOpen;
    let shared = audit_support::shared();
    let filter = config.build(&shared);

    let mut c = cx("r-open");
    let verdict = drive(&*filter, &mut c, &exchange(200, Outcome::Ok), true).await;
    assert!(matches!(verdict, Verdict::Continue));
    assert_eq!(
        metric(
            &shared,
            "sluice_audit_write_errors_total",
            Some("unavailable")
        ),
        1.0
    );
    // Still held for when the log comes back.
    let w = writer(&shared);
    assert_eq!(w.queue_depth(), 1);
    assert_eq!(metric(&shared, "sluice_audit_queue_depth", None), 1.0);

    // It never does: shutdown gives up after its bound, and says so; the held record goes to
    // the process log and is counted.
    assert!(!w.shutdown(Duration::from_millis(100)));
    assert_eq!(
        metric(&shared, "sluice_audit_write_errors_total", Some("closed")),
        1.0
    );
    assert_eq!(metric(&shared, "sluice_audit_queue_depth", None), 0.0);
}

/// The log's device fails mid-run (ENOSPC): requests get 503 from then on, the records already
/// accepted are held, and written in order once the log is writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failure_at_runtime_turns_requests_away_and_loses_nothing() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("no /dev/full: skipping");
        return;
    }
    let dir = TempDir::new("enospc");
    let log = dir.join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    let config = Config::new(&log, Fsync::Always);
    let shared = audit_support::shared();
    let filter = config.build(&shared);
    let w = writer(&shared);
    assert!(
        w.is_healthy(),
        "opening /dev/full works; writing to it does not"
    );

    let mut c = cx("r-first");
    let verdict = drive(&*filter, &mut c, &exchange(200, Outcome::Ok), true).await;
    assert!(matches!(verdict, Verdict::Continue));
    assert!(!w.is_healthy());
    assert_eq!(
        metric(
            &shared,
            "sluice_audit_write_errors_total",
            Some("durability_timeout")
        ),
        1.0,
        "the record could not be confirmed durable, and that is counted"
    );

    let mut c = cx("r-second");
    let verdict = drive(
        &*filter,
        &mut c,
        &exchange(503, Outcome::InternalError),
        true,
    )
    .await;
    assert!(matches!(verdict, Verdict::Respond(ref r) if r.status == 503));

    // Replace the device with a real file: the writer reopens the path and catches up.
    std::fs::remove_file(&log).unwrap();
    std::fs::write(&log, b"").unwrap();
    audit_support::eventually("the writer recovers", || w.is_healthy());
    filter.shutdown().await;
    let ids: Vec<String> = records(&log).into_iter().map(|r| r.request_id).collect();
    assert_eq!(ids, ["r-first", "r-second"]);
    let r = audit::verify(&[log]);
    assert!(r.is_ok(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_writer_and_the_chain() {
    let dir = TempDir::new("reload");
    let log = dir.join("audit.jsonl");
    let shared = audit_support::shared();
    let first = Config::new(&log, Fsync::Interval).build(&shared);
    let mut c = cx("r-before");
    drive(&*first, &mut c, &exchange(200, Outcome::Ok), true).await;

    // Same file, spelled differently, another fsync mode.
    let relative_twin = dir.path().join(".").join("audit.jsonl");
    let second = Config::new(&relative_twin, Fsync::Always).build(&shared);
    assert_eq!(shared.all::<AuditWriter>().len(), 1, "one writer per log");
    let mut c = cx("r-after");
    drive(&*second, &mut c, &exchange(200, Outcome::Ok), true).await;
    assert_eq!(
        records(&log).len(),
        2,
        "always mode now: on disk without a flush"
    );
    drop(first);
    second.shutdown().await;
    let r = audit::verify(&[log]);
    assert!(r.is_ok() && r.records == 2, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_after_shutdown_go_to_the_process_log_and_are_counted() {
    let dir = TempDir::new("closed");
    let log = dir.join("audit.jsonl");
    let shared = audit_support::shared();
    let filter = Config::new(&log, Fsync::Interval).build(&shared);
    filter.shutdown().await;
    let mut c = cx("r-late");
    drive(&*filter, &mut c, &exchange(200, Outcome::Ok), true).await;
    assert_eq!(
        metric(&shared, "sluice_audit_write_errors_total", Some("closed")),
        1.0
    );
    assert!(records(&log).is_empty());
}

#[test]
fn filter_options_are_rejected_with_their_path() {
    let dir = TempDir::new("options");
    let config = Config::new(&dir.join("audit.jsonl"), Fsync::Interval);
    let shared = audit_support::shared();
    let mut options = toml::Table::new();
    options.insert("path".into(), toml::Value::String("x".into()));
    let err = audit::build(&config.policy(), &options, "filters[3]", &shared)
        .err()
        .expect("an unknown option is an error");
    assert_eq!(err.0[0].path, "filters[3].path");
}

#[test]
fn a_log_whose_chain_cannot_be_continued_fails_the_build() {
    let dir = TempDir::new("garbage");
    let log = dir.join("audit.jsonl");
    // More than the 4 MiB startup looks back, and not one record in it.
    std::fs::write(&log, vec![b'x'; 5 << 20]).unwrap();
    let config = Config::new(&log, Fsync::Interval);
    let shared = audit_support::shared();
    let err = audit::build(&config.policy(), &toml::Table::new(), "filters[0]", &shared)
        .err()
        .expect("cannot continue a chain from garbage");
    assert_eq!(err.0[0].path, "audit.path");
    assert!(
        err.0[0].message.contains("hash chain"),
        "{}",
        err.0[0].message
    );
}

#[test]
fn a_second_writer_on_the_same_log_waits_for_the_first() {
    let dir = TempDir::new("lock");
    let log = dir.join("audit.jsonl");
    let opts = Config::new(&log, Fsync::Interval).audit.writer_options();
    let metrics = sluice_filters::audit::AuditMetrics::detached().unwrap();
    let first = AuditWriter::start(opts.clone(), metrics.clone()).unwrap();
    let second = AuditWriter::start(opts, metrics).unwrap();
    assert!(first.is_healthy());
    assert!(!second.is_healthy());
    assert!(
        second
            .error()
            .is_some_and(|e| e.contains("another process")),
        "{:?}",
        second.error()
    );
    assert!(first.shutdown(Duration::from_secs(5)));
    drop(first);
    audit_support::eventually("the second writer takes over", || second.is_healthy());
}
