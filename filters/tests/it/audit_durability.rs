//! Durability: a record acknowledged under `fsync = "always"` survives SIGKILL; SIGTERM under
//! load loses nothing; a crash under `interval` leaves a log that verifies; a full queue makes
//! the request path wait and never drops a record silently.
//!
//! The crash tests run this test binary again as a child process (`child_process` below, which
//! does nothing unless `SLUICE_AUDIT_CHILD` is set), the way the gateway runs: a multi-thread
//! Tokio runtime driving the filter's phases.

use crate::support::audit as audit_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use audit_support::{cx, drive, exchange, identify, records, Config, TempDir};
use sluice_filters::audit::{
    self, AuditMetrics, AuditRecord, AuditWriter, Fsync, SubmitError, WriterOptions,
};
use sluice_filters::Outcome;

const CHILD_MODE: &str = "SLUICE_AUDIT_CHILD";
const CHILD_LOG: &str = "SLUICE_AUDIT_CHILD_LOG";

fn spawn_child(mode: &str, log: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "audit_durability::child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_LOG, log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The child side of the crash tests.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let log = std::path::PathBuf::from(std::env::var(CHILD_LOG).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    match mode.as_str() {
        "ack-then-kill" => rt.block_on(child_acks(&log, Fsync::Always)),
        "interval-kill" => rt.block_on(child_acks(&log, Fsync::Interval)),
        "term" => rt.block_on(child_term(&log)),
        other => panic!("unknown child mode {other}"),
    }
}

/// Requests in a loop on 8 tasks, printing `acked <id>` once the client would hold the whole
/// response (after on_response_complete), until killed.
async fn child_acks(log: &Path, fsync: Fsync) {
    let config = Config::new(log, fsync);
    let shared = audit_support::shared();
    let filter = config.build(&shared);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let filter = filter.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let id = format!("t{t}-{i}");
                let mut c = cx(&id);
                identify(&mut c);
                let ex = exchange(200, Outcome::Ok);
                let headers = http::HeaderMap::new();
                let (method, path) = (c.method.clone(), c.path.clone());
                let head = sluice_filters::RequestHead {
                    method: &method,
                    path: &path,
                    headers: &headers,
                };
                filter.on_request_head(&head, &mut c).await;
                let durable = filter.on_response_complete(&ex, &c).is_ok();
                c.response_completed = true;
                if durable {
                    // Only then does the engine let the client have the last byte.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "acked {id}");
                    let _ = out.flush();
                }
                filter.on_log(&ex, &c).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Load on 8 tasks until SIGTERM; then what the gateway does: stop taking requests, let the
/// in-flight ones finish, shut the filters down, report how many requests were served.
async fn child_term(log: &Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).unwrap();
    let config = Config::new(log, Fsync::Interval);
    let shared = audit_support::shared();
    let filter = config.build(&shared);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (filter, stop, served) = (filter.clone(), stop.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) && i < 20_000 {
                let mut c = cx(&format!("t{t}-{i}"));
                drive(&*filter, &mut c, &exchange(200, Outcome::Ok), true).await;
                served.fetch_add(1, Ordering::AcqRel);
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    while served.load(Ordering::Acquire) < 2000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("busy");
    term.recv().await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    filter.shutdown().await;
    println!("total {}", served.load(Ordering::Acquire));
    std::process::exit(0);
}

/// Reads `acked <id>` lines until `n` are seen; returns them and the reader.
fn read_acks<R: BufRead>(reader: &mut R, n: usize, acked: &mut Vec<String>) {
    let mut line = String::new();
    while acked.len() < n {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        // libtest's own "test child_process ... " may precede the first line.
        if let Some((_, id)) = line.trim_end().split_once("acked ") {
            acked.push(id.to_string());
        }
    }
}

#[test]
fn fsync_always_acknowledged_records_survive_sigkill() {
    let dir = TempDir::new("sigkill");
    let log = dir.join("audit.jsonl");
    let mut child = spawn_child("ack-then-kill", &log);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    read_acks(&mut out, 400, &mut acked);
    assert_eq!(acked.len(), 400, "the child acknowledged requests");
    child.kill().unwrap(); // SIGKILL, while the tasks are still writing
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed, not exited: {status:?}");
    // Acknowledgements printed before the kill but not read yet count too.
    read_acks(&mut out, usize::MAX, &mut acked);

    let written: HashSet<String> = records(&log).into_iter().map(|r| r.request_id).collect();
    let missing: Vec<_> = acked.iter().filter(|id| !written.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let r = audit::verify(&[log]);
    assert!(r.is_ok(), "{r}");
    assert!(r.records >= acked.len() as u64);
}

#[test]
fn a_crash_under_interval_leaves_a_log_that_verifies() {
    let dir = TempDir::new("interval-kill");
    let log = dir.join("audit.jsonl");
    let mut child = spawn_child("interval-kill", &log);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    read_acks(&mut out, 1, &mut acked);
    // Kill it while it writes: once the log holds some records, the writer is busy with more.
    audit_support::eventually("records reach the log", || records(&log).len() >= 200);
    child.kill().unwrap();
    child.wait().unwrap();
    let r = audit::verify(std::slice::from_ref(&log));
    assert!(r.is_ok(), "{r}");
    assert!(r.records >= 200);

    // And the next start continues that chain, torn tail or not.
    let w = AuditWriter::start(
        Config::new(&log, Fsync::Interval).audit.writer_options(),
        AuditMetrics::detached().unwrap(),
    )
    .unwrap();
    let body = AuditRecord {
        request_id: "after-restart".into(),
        ..AuditRecord::from_request(&cx("x"), &exchange(200, Outcome::Ok))
    };
    w.submit_blocking(body.to_body().unwrap(), Duration::from_secs(10))
        .unwrap();
    assert!(w.shutdown(Duration::from_secs(10)));
    let after = audit::verify(&[log]);
    assert!(after.is_ok(), "{after}");
    assert_eq!(after.records, r.records + 1);
}

#[test]
fn sigterm_under_load_loses_nothing() {
    let dir = TempDir::new("sigterm");
    let log = dir.join("audit.jsonl");
    let mut child = spawn_child("term", &log);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.trim_end().ends_with("busy") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let total: usize = rest
        .lines()
        .find_map(|l| l.split_once("total ").map(|(_, n)| n))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in {rest:?}"));

    let ids: HashSet<String> = records(&log).into_iter().map(|r| r.request_id).collect();
    assert_eq!(ids.len(), total, "one record for every request served");
    let r = audit::verify(&[log]);
    assert!(r.is_ok() && r.warnings.is_empty(), "{r}");
    assert_eq!(r.records as usize, total);
}

/// A stalled log (a pipe nobody reads) fills the writer's queue; a request then waits for room
/// up to its bound, and a record that cannot get in is handed back — never dropped silently.
/// Records waiting for room all get in once the log drains, in one intact chain.
#[test]
fn a_full_queue_makes_requests_wait_and_drops_nothing() {
    let dir = TempDir::new("fifo");
    let fifo = dir.join("audit.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Opened read-write, the pipe has a reader (us) but nobody drains it yet.
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let capacity = 4;
    let writer = Arc::new(
        AuditWriter::start(
            WriterOptions {
                path: fifo.to_string_lossy().into_owned(),
                fsync: Fsync::Always,
                fsync_interval: Duration::from_millis(100),
                max_file_bytes: None,
                queue_capacity: capacity,
            },
            AuditMetrics::detached().unwrap(),
        )
        .unwrap(),
    );
    let body = |id: String| {
        AuditRecord {
            request_id: id,
            ..AuditRecord::from_request(&cx("x"), &exchange(200, Outcome::Ok))
        }
        .to_body()
        .unwrap()
    };

    // Fill the pipe, then the queue, until a submit with a short bound gives up.
    let mut accepted = 0usize;
    let rejected = loop {
        assert!(accepted < 100_000, "the writer never stalled");
        match writer.submit_blocking(body(format!("a-{accepted}")), Duration::from_millis(200)) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    let SubmitError::Full(back) = rejected else {
        panic!("expected a full queue, got {rejected:?}");
    };
    assert!(
        String::from_utf8_lossy(&back).contains(&format!("\"a-{accepted}\"")),
        "the rejected record is handed back to be kept elsewhere"
    );
    assert_eq!(writer.queue_depth(), capacity);

    // Requests that wait as long as it takes: blocking and async submitters.
    let waiting = 20;
    let mut handles = Vec::new();
    for i in 0..waiting {
        let w = writer.clone();
        let b = body(format!("w-{i}"));
        handles.push(std::thread::spawn(move || {
            if i % 2 == 0 {
                w.submit_blocking(b, Duration::from_secs(60)).is_ok()
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(w.submit(b, Duration::from_secs(60)))
                    .is_ok()
            }
        }));
    }

    // Drain the pipe until every accepted and waiting record came through.
    let expected = accepted + waiting;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while bytes.iter().filter(|&&b| b == b'\n').count() < expected {
        let n = pipe.read(&mut chunk).unwrap();
        bytes.extend_from_slice(&chunk[..n]);
    }
    for h in handles {
        assert!(h.join().unwrap(), "a waiting request was dropped");
    }
    assert!(writer.shutdown(Duration::from_secs(10)));

    let copy = dir.join("captured.jsonl");
    std::fs::write(&copy, &bytes).unwrap();
    let r = audit::verify(std::slice::from_ref(&copy));
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records as usize, expected);
    let ids: HashSet<String> = records(&copy).into_iter().map(|r| r.request_id).collect();
    assert!(
        !ids.contains(&format!("a-{accepted}")),
        "the rejected one is not in the log"
    );
    assert!((0..waiting).all(|i| ids.contains(&format!("w-{i}"))));
}
