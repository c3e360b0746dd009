//! Active health checks: a `GET` of `health_check.path` every `interval_ms` that must answer
//! 2xx within `timeout_ms`; while it does not, the upstream is out of service.
//!
//! The probe itself is `pingora-load-balancing`'s `HttpHealthCheck`: Pingora's own HTTP client,
//! connector and TLS (the same peer options as the proxied requests: SNI, certificate and
//! host verification, the upstream's `ca_file`). Its scheduling (`HealthCheckService` over
//! `Backends`) is not used: backends there are socket addresses from a discovery source, while
//! Sluice's upstreams come from a config that reloads, carry credentials and paths, and keep
//! their state by name. So each upstream with a `health_check` gets one task on the control
//! runtime, restarted when its settings change and stopped when a reload removes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::Backend;

use super::config::HealthCheckConfig;
use super::health::TargetHealth;
use super::UpstreamRt;

/// What a probe depends on: a change restarts it.
#[derive(Clone, PartialEq, Eq)]
struct ProbeKey {
    pool_key: u64,
    addr: std::net::SocketAddr,
    host: String,
    path: String,
    credential: Option<Vec<u8>>,
    check: HealthCheckConfig,
}

struct Probe {
    key: ProbeKey,
    task: tokio::task::JoinHandle<()>,
}

/// The running probes, by upstream name.
#[derive(Default)]
pub(super) struct Probes {
    running: Mutex<HashMap<String, Probe>>,
}

impl Probes {
    /// Starts the probes `upstreams` ask for, keeps unchanged ones, stops the rest.
    pub(super) fn sync(&self, runtime: Option<&tokio::runtime::Handle>, upstreams: &[UpstreamRt]) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for u in upstreams {
            let Some(check) = &u.health_check else {
                u.health.clear_check();
                continue;
            };
            let key = ProbeKey {
                pool_key: u.pool_key,
                addr: u.addr,
                host: u.host_header.clone(),
                path: format!("{}{}", u.base_path, check.path),
                credential: u.credential.as_ref().map(|(_, v)| v.as_bytes().to_vec()),
                check: check.clone(),
            };
            if let Some(p) = running.remove(&u.name) {
                if p.key == key && !p.task.is_finished() {
                    next.insert(u.name.clone(), p);
                    continue;
                }
                p.task.abort();
            }
            let Some(rt) = runtime else { continue };
            match http_check(u, &key.path, check) {
                Ok(hc) => {
                    let task = rt.spawn(run(hc, u.addr, check.clone(), u.health.clone()));
                    next.insert(u.name.clone(), Probe { key, task });
                }
                Err(e) => {
                    tracing::error!(upstream = %u.name, error = %e, "health check not started")
                }
            }
        }
        for (_, p) in running.drain() {
            p.task.abort();
        }
        *running = next;
    }
}

/// The check of one upstream: its peer (as the proxy builds it) and a `GET` of `path` with its
/// `Host` and key.
fn http_check(
    u: &UpstreamRt,
    path: &str,
    check: &HealthCheckConfig,
) -> pingora_core::Result<HttpHealthCheck> {
    let mut hc = HttpHealthCheck::new(&u.host, u.tls);
    let timeout = Duration::from_millis(check.timeout_ms);
    let mut peer = u.peer();
    peer.options.connection_timeout = Some(timeout.min(u.connect_timeout));
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    hc.peer_template = peer;
    let mut req = RequestHeader::build("GET", path.as_bytes(), Some(4))?;
    req.insert_header("host", u.host_value.clone())?;
    req.insert_header("user-agent", "sluice-health-check")?;
    if let Some((name, value)) = &u.credential {
        req.insert_header(*name, value.clone())?;
    }
    if u.anthropic {
        req.insert_header("anthropic-version", "2023-06-01")?;
    }
    hc.req = req;
    hc.validator = Some(Box::new(|resp: &ResponseHeader| {
        if resp.status.is_success() {
            Ok(())
        } else {
            pingora_core::Error::e_explain(
                pingora_core::ErrorType::HTTPStatus(resp.status.as_u16()),
                "health check answered",
            )
        }
    }));
    Ok(hc)
}

/// Checks now, then every `interval`, recording each result.
async fn run(
    hc: HttpHealthCheck,
    addr: std::net::SocketAddr,
    check: HealthCheckConfig,
    health: Arc<TargetHealth>,
) {
    let backend = Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    };
    let interval = Duration::from_millis(check.interval_ms);
    let timeout = Duration::from_millis(check.timeout_ms);
    loop {
        let result = match tokio::time::timeout(timeout, hc.check(&backend)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no answer within {} ms", check.timeout_ms)),
        };
        health.record_check(result, interval);
        tokio::time::sleep(interval).await;
    }
}

/// A probe error, short (it is shown by `/admin/upstreams` and logged).
fn describe(e: &pingora_core::Error) -> String {
    let text = match e.etype() {
        pingora_core::ErrorType::HTTPStatus(s) => format!("answered {s}"),
        t => t.as_str().to_string(),
    };
    text.chars().take(200).collect()
}
