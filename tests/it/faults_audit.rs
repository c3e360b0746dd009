//! Faults of the audit disk under `fsync = "always"` (SPEC §6, issue 29), made for real as
//! root: a tiny tmpfs that fills up, and an ext4 loop filesystem frozen with `fsfreeze` (a
//! write that stalls). A `sluice run` subprocess serves 4 clients; no client may hold a
//! complete 200 whose record is not on disk, even after a `kill -9`; `/readyz` answers 503
//! while the trail fails closed and 200 again once it recovers; the refusals are
//! `503 audit_unavailable`, recorded with that outcome.
//!
//! Without root (or without tmpfs/loop/fsfreeze), each test says so and does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::process::SluiceProcess;
use crate::support::{client, Directory};
use serde_json::{json, Value};

const ALICE: &str = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEalice";

/// A filesystem this test mounted; unfrozen, unmounted (and its loop device freed) on drop,
/// panics included.
struct Mounted {
    dir: PathBuf,
    frozen: AtomicBool,
}

impl Mounted {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
        Mounted::mount(
            dir,
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
        )
    }

    fn ext4_loop(dir: &Path, image: &Path) -> Option<Mounted> {
        let made = Command::new("truncate")
            .args(["-s", "16M"])
            .arg(image)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(image)
                .status()
                .is_ok_and(|s| s.success());
        if !made {
            eprintln!("SKIPPED: cannot make an ext4 image here (truncate, mkfs.ext4)");
            return None;
        }
        let image = image.display().to_string();
        Mounted::mount(dir, &["-o", "loop", &image])
    }

    fn mount(dir: &Path, args: &[&str]) -> Option<Mounted> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: not root, cannot mount a filesystem to fault");
            return None;
        }
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(args)
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: `mount {args:?}` failed here");
            return None;
        }
        Some(Mounted {
            dir: dir.to_path_buf(),
            frozen: AtomicBool::new(false),
        })
    }

    fn freeze(&self, on: bool) {
        let flag = if on { "-f" } else { "-u" };
        let ok = Command::new("fsfreeze")
            .arg(flag)
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "fsfreeze {flag} failed");
        self.frozen.store(on, Ordering::SeqCst);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.frozen.load(Ordering::SeqCst) {
            let _ = Command::new("fsfreeze").arg("-u").arg(&self.dir).status();
        }
        // Lazy: a gateway killed on a panic may still hold the log open for a moment.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A `sluice run` subprocess, killed (SIGKILL) on drop without waiting for it: a process
/// blocked on a frozen filesystem dies only once it thaws, which the mount's drop does.
fn spawn(dir: &Path, audit: &Path, write_timeout_ms: u64) -> SluiceProcess {
    let config = format!(
        r#"[[upstreams]]
name = "mock"
builtin = "mock"
[[models]]
name = "mock-echo"
upstream = "mock"
upstream_model = "echo"

{directory}
[audit]
path = "{audit}"
fsync = "always"
write_timeout_ms = {write_timeout_ms}
"#,
        directory = Directory::role("dev", &["chat", "passthrough"], &["mock-*"])
            .key("alice-key", ALICE)
            .filters(&["auth", "audit"])
            .toml(),
        audit = audit.display(),
    );
    SluiceProcess::run_in(dir, "shutdown_grace_seconds = 5", &config).dont_wait_on_drop()
}

fn ready(s: &SluiceProcess) -> u16 {
    client()
        .get(format!("http://{}/readyz", s.admin))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a client got: a complete answer (status and whole body), or nothing whole.
#[derive(Debug, Clone)]
enum Got {
    Whole(u16, Value),
    Broken,
}

fn call(s: &SluiceProcess, id: &str) -> Got {
    let sent = client()
        .post(format!("http://{}/v1/chat/completions", s.addr))
        .bearer_auth(ALICE)
        .header("x-request-id", id)
        .json(&json!({"model": "mock-echo", "messages": [{"role": "user", "content": "fault"}]}))
        .send();
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes() {
                Ok(b) => Got::Whole(status, serde_json::from_slice(&b).unwrap_or(Value::Null)),
                Err(_) => Got::Broken,
            }
        }
        Err(_) => Got::Broken,
    }
}

/// 4 clients until `stop`; every request's id and what it got.
fn load(
    s: &Arc<SluiceProcess>,
    tag: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, Got)>>> {
    (0..4)
        .map(|w| {
            let (s, stop, tag) = (s.clone(), stop.clone(), tag.to_string());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && i < 2000 {
                    let id = format!("{tag}-{w}-{i}");
                    let got = call(&s, &id);
                    out.push((id, got));
                    i += 1;
                }
                out
            })
        })
        .collect()
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn verify(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Every complete 200 has its record in `log`; returns how many there were.
fn every_200_recorded(got: &[(String, Got)], log: &Path) -> usize {
    let recs = records(log);
    let mut n = 0;
    for (id, g) in got {
        if let Got::Whole(200, _) = g {
            n += 1;
            assert!(
                recs.iter().any(|r| r["request_id"] == *id),
                "{id}: a complete 200 without its record on disk"
            );
        }
    }
    n
}

#[test]
fn a_full_audit_disk_withholds_answers_fails_readiness_and_loses_nothing_to_kill9() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mnt = dir.path().join("audit-disk");
    let Some(_disk) = Mounted::tmpfs(&mnt, "64k") else {
        return;
    };
    let log = mnt.join("audit.jsonl");
    let s = Arc::new(spawn(dir.path(), &log, 2000));

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, "full", &stop);
    // Fill the disk: until /readyz reports the trail failing closed.
    wait_for("/readyz 503 once the audit disk is full", || {
        ready(&s) == 503
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let got: Vec<(String, Got)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    let refused: Vec<&Value> = got
        .iter()
        .filter_map(|(_, g)| match g {
            Got::Whole(503, v) => Some(v),
            _ => None,
        })
        .collect();
    assert!(!refused.is_empty(), "no refusal while the disk was full");
    for v in &refused {
        assert_eq!(v["error"]["code"], "audit_unavailable", "{v}");
    }
    for (id, g) in &got {
        if let Got::Whole(st, _) = g {
            assert!(matches!(st, 200 | 503), "{id}: {st}");
        }
    }

    // The operator grows the disk (the refusals' own records, queued meanwhile, need room
    // too): ready again by itself, answers again.
    let grown_at = Instant::now();
    let grown = Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(grown, "remount the tmpfs larger");
    wait_for("/readyz 200 after the disk has room", || ready(&s) == 200);
    // Reported, not asserted: how long readiness took to come back.
    eprintln!(
        "full disk: /readyz 200 {:?} after the disk grew",
        grown_at.elapsed()
    );
    let after = (0..5)
        .map(|i| (format!("after-{i}"), call(&s, &format!("after-{i}"))))
        .collect::<Vec<_>>();
    for (id, g) in &after {
        assert!(matches!(g, Got::Whole(200, _)), "{id}: {g:?}");
    }
    let metrics = client()
        .get(format!("http://{}/metrics", s.admin))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    assert!(
        support::metric_sum(
            &metrics,
            "sluice_requests_total",
            &["outcome=\"audit_unavailable\""]
        ) >= 1.0,
        "the refusals count as the audit's"
    );

    // kill -9, then: every complete 200 is on disk, and the trail verifies.
    let Ok(mut s) = Arc::try_unwrap(s) else {
        panic!("workers still hold the gateway");
    };
    s.kill();
    let answered = every_200_recorded(&got, &log) + every_200_recorded(&after, &log);
    assert!(answered > 5, "some answers before the disk filled");
    let (code, out) = verify(&log);
    assert_eq!(code, 0, "{out}");
    // The refusals queued while the disk was full reached it after: recorded as the audit's.
    let recs = records(&log);
    assert!(
        recs.iter().any(|r| r["outcome"] == "audit_unavailable"),
        "a refusal's record names the audit"
    );
    eprintln!(
        "full disk: {answered} complete 200s, all on disk; {} refused with 503 audit_unavailable; {} cut",
        refused.len(),
        got.iter().filter(|(_, g)| matches!(g, Got::Broken)).count()
    );
}

#[test]
fn a_stalled_audit_disk_withholds_answers_and_recovers() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mnt = dir.path().join("audit-disk");
    let Some(disk) = Mounted::ext4_loop(&mnt, &dir.path().join("disk.img")) else {
        return;
    };
    let log = mnt.join("audit.jsonl");
    let s = Arc::new(spawn(dir.path(), &log, 300));
    for i in 0..5 {
        assert!(matches!(
            call(&s, &format!("before-{i}")),
            Got::Whole(200, _)
        ));
    }

    disk.freeze(true);
    // A stream admitted before the stall is known: its answer flows, but its end is withheld
    // for an error event (no `[DONE]`).
    let text = client()
        .post(format!("http://{}/v1/chat/completions", s.addr))
        .bearer_auth(ALICE)
        .json(&json!({"model": "mock-echo", "stream": true,
            "messages": [{"role": "user", "content": "one two three"}]}))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    assert!(
        !text.contains("[DONE]"),
        "a stream completed while frozen: {text}"
    );
    assert!(text.contains("audit_unavailable"), "no error event: {text}");
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, "stall", &stop);
    wait_for("/readyz 503 while audit writes stall", || ready(&s) == 503);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let got: Vec<(String, Got)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    // While frozen nothing can be durable: no complete 200 at all.
    for (id, g) in &got {
        match g {
            Got::Whole(200, _) => panic!("{id}: a complete 200 while the audit disk was frozen"),
            Got::Whole(503, v) => assert_eq!(v["error"]["code"], "audit_unavailable", "{v}"),
            Got::Whole(st, v) => panic!("{id}: {st} {v}"),
            Got::Broken => {}
        }
    }
    assert!(!got.is_empty());

    disk.freeze(false);
    let thawed_at = Instant::now();
    wait_for("/readyz 200 after the disk thaws", || ready(&s) == 200);
    eprintln!(
        "stall: /readyz 200 {:?} after the thaw",
        thawed_at.elapsed()
    );
    wait_for("answers again after the disk thaws", || {
        matches!(call(&s, "after"), Got::Whole(200, _))
    });
    // Frozen again: an answer passed through as it comes (the upstream's own 404 for a path it
    // does not serve) loses its last byte; the client never holds it whole.
    disk.freeze(true);
    let passed = client()
        .post(format!("http://{}/v1/not-served-here", s.addr))
        .bearer_auth(ALICE)
        .json(&json!({"model": "mock-echo"}))
        .send()
        .map(|r| (r.status().as_u16(), r.bytes().map(|b| b.len())));
    eprintln!("stall: a passed-through answer while frozen: {passed:?}");
    assert!(
        matches!(passed, Err(_) | Ok((_, Err(_))) | Ok((503, Ok(_)))),
        "a passed-through answer completed while frozen: {passed:?}"
    );
    disk.freeze(false);
    wait_for("/readyz 200 after the second thaw", || ready(&s) == 200);

    let Ok(mut s) = Arc::try_unwrap(s) else {
        panic!("workers still hold the gateway");
    };
    s.kill();
    let (code, out) = verify(&log);
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "stall: {} requests while frozen, {} refused 503 audit_unavailable, {} cut, none complete",
        got.len(),
        got.iter()
            .filter(|(_, g)| matches!(g, Got::Whole(503, _)))
            .count(),
        got.iter().filter(|(_, g)| matches!(g, Got::Broken)).count()
    );
}
