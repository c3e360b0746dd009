//! Shared helpers of the audit tests: a temporary directory, a policy around `[audit]`, requests
//! driven through the filter the way the engine drives them.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use sluice_filters::audit::{AuditRecord, AuditSettings, Fsync};
use sluice_filters::dlp::DlpSettings;
use sluice_filters::ratelimit::RateLimitSettings;
use sluice_filters::{
    Cx, Exchange, Filter, Grants, Identity, Outcome, Policy, RequestHead, Sections, Shared, Usage,
    Verdict,
};

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-audit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The policy sections a filter factory gets, around one `[audit]`.
pub struct Config {
    pub rate_limit: RateLimitSettings,
    pub dlp: DlpSettings,
    pub audit: AuditSettings,
}

impl Config {
    pub fn new(path: &Path, fsync: Fsync) -> Config {
        Config {
            rate_limit: RateLimitSettings::default(),
            dlp: DlpSettings::default(),
            audit: AuditSettings {
                path: path.to_string_lossy().into_owned(),
                fsync,
                ..AuditSettings::default()
            },
        }
    }

    pub fn policy(&self) -> Policy<'_> {
        Policy {
            orgs: &[],
            roles: &[],
            users: &[],
            keys: &[],
            sections: Sections::new()
                .with(&self.rate_limit)
                .with(&self.dlp)
                .with(&self.audit),
            models: &[],
            agents: &[],
            prices: sluice_filters::spend::no_prices(),
        }
    }

    pub fn build(&self, shared: &Shared) -> Arc<dyn Filter> {
        match sluice_filters::audit::build(
            &self.policy(),
            &toml::Table::new(),
            "filters[3]",
            shared,
        ) {
            Ok(f) => f,
            Err(e) => panic!("build failed: {e}"),
        }
    }
}

pub fn shared() -> Shared {
    Shared::new(prometheus::Registry::new())
}

/// A request as the engine has it by the time it logs: identity, model, client facts.
pub fn cx(request_id: &str) -> Cx {
    let mut cx = Cx::new(
        request_id.to_string(),
        Method::POST,
        "/v1/chat/completions".into(),
    );
    cx.client_ip = Some("203.0.113.7".parse::<IpAddr>().unwrap());
    cx.user_agent = Some("OpenAI/Python 1.54.0".into());
    cx.model = Some("mock-echo".into());
    cx
}

pub fn identify(cx: &mut Cx) {
    cx.identity = Some(Identity {
        key_id: "alice-laptop".into(),
        user: "alice".into(),
        org: "acme".into(),
        role: "analyst".into(),
        grants: Arc::new(Grants::default()),
        ancestors: Arc::from([]),
    });
}

pub fn exchange(status: u16, outcome: Outcome) -> Exchange {
    Exchange {
        status,
        outcome,
        latency: Duration::from_millis(12),
        upstream_latency: (outcome == Outcome::Ok).then(|| Duration::from_millis(9)),
        error_code: None,
    }
}

pub fn usage(prompt: u64, completion: u64) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_prompt_tokens: 0,
    })
}

/// What the engine does for one request: the head phase, then (when the client gets a whole
/// response) `on_response_complete` and the flag, then `on_log`. Returns the head verdict.
pub async fn drive(filter: &dyn Filter, cx: &mut Cx, ex: &Exchange, completes: bool) -> Verdict {
    let headers = HeaderMap::new();
    let method = cx.method.clone();
    let path = cx.path.clone();
    let head = RequestHead {
        method: &method,
        path: &path,
        headers: &headers,
    };
    let verdict = filter.on_request_head(&head, cx).await;
    if completes {
        let _ = filter.on_response_complete(ex, cx);
        cx.response_completed = true;
    }
    filter.on_log(ex, cx).await;
    verdict
}

/// The records of a log file (lines that are not records — torn ones — are skipped).
pub fn records(path: &Path) -> Vec<AuditRecord> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

pub fn find<'a>(recs: &'a [AuditRecord], request_id: &str) -> &'a AuditRecord {
    let found: Vec<_> = recs.iter().filter(|r| r.request_id == request_id).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one record for {request_id}: {recs:#?}"
    );
    found[0]
}

/// A counter or gauge from the registry; `label` selects `kind` when given.
pub fn metric(shared: &Shared, name: &str, kind: Option<&str>) -> f64 {
    for fam in shared.registry().gather() {
        if fam.get_name() != name {
            continue;
        }
        for m in fam.get_metric() {
            let matches = match kind {
                None => true,
                Some(k) => m
                    .get_label()
                    .iter()
                    .any(|l| l.get_name() == "kind" && l.get_value() == k),
            };
            if matches {
                return if fam.get_field_type() == prometheus::proto::MetricType::COUNTER {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
            }
        }
    }
    panic!("no metric {name} {kind:?}");
}

/// Polls `cond` (a state the system must reach on its own) for up to 20 s.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < until, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
