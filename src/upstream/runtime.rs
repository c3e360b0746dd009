//! An upstream of one config generation, ready for the request path and the health checks: its
//! resolved address, credentials, timeouts and the Pingora peer that reaches it. Built by
//! `crate::state::Snapshot::build`; used by the proxy and by `probe.rs`, which therefore need
//! neither the state nor each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::WrappedX509;
use sluice_filters::ConfigError;

use super::config::{UpstreamApi, UpstreamConfig};
use crate::config::upstream_url::{CheckedUpstream, UpstreamTarget};

/// An upstream ready for the request path: resolved address, credentials, timeouts.
pub struct UpstreamRt {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
    pub host: String,
    /// The `Host` header: host, plus the port when it is not the scheme's default.
    pub host_header: String,
    /// The same, ready to send.
    pub host_value: HeaderValue,
    pub base_path: String,
    /// The upstream's own key from `api_key_env` (`authorization: Bearer …`, or `x-api-key`
    /// for `api = "anthropic"`), never logged.
    pub credential: Option<(&'static str, HeaderValue)>,
    /// `api = "anthropic"`: `anthropic-version` is set when the client sent none.
    pub anthropic: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub ca: Option<Arc<[WrappedX509]>>,
    /// Separates the connection pools of upstreams: Pingora's pool key ignores the trusted CAs,
    /// so two upstreams on one address must never share a connection.
    pub pool_key: u64,
    /// What is known of its health, shared with the other generations that have an upstream of
    /// this name (see `crate::upstream`).
    pub health: Arc<super::TargetHealth>,
    pub health_check: Option<super::config::HealthCheckConfig>,
}

impl UpstreamRt {
    /// The peer of this upstream: its resolved address, TLS (SNI, certificate and host
    /// verification, its own CAs), timeouts and a connection pool of its own. Requests and
    /// health checks both use it.
    pub fn peer(&self) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr, self.tls, self.host.clone());
        peer.group_key = self.pool_key;
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        peer
    }
}

impl UpstreamRt {
    /// Upstream `p` (`upstreams[i]`) of a new generation, from its entry and what loading
    /// parsed, resolved and read of it (`checked`); `None`, with the problems in `errs`, when it
    /// cannot be reached. A `builtin` upstream is the in-process mock at `mock_addr`.
    pub(crate) fn build(
        p: &str,
        u: &UpstreamConfig,
        checked: &CheckedUpstream,
        mock_addr: Option<SocketAddr>,
        health: Arc<super::TargetHealth>,
        errs: &mut Vec<ConfigError>,
    ) -> Option<UpstreamRt> {
        let target = match (&checked.target, &u.builtin, mock_addr) {
            (Some(Ok(t)), _, _) => t.clone(),
            (Some(Err(m)), _, _) => {
                errs.push(ConfigError::new(format!("{p}.url"), m.as_str()));
                return None;
            }
            (None, Some(_), Some(addr)) => UpstreamTarget {
                addr: Some(addr),
                tls: false,
                host: addr.to_string(),
                base_path: String::new(),
            },
            _ => {
                errs.push(ConfigError::new(p, "the built-in mock is not running"));
                return None;
            }
        };
        let addr = target.addr?;
        let anthropic = u.api == UpstreamApi::Anthropic;
        let credential = credential(p, u, anthropic, errs);
        let mut pool_key = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(&u.name, &u.url, &u.builtin), &mut pool_key);
        let ca = match &checked.ca {
            Some(Ok(ders)) => {
                std::hash::Hash::hash(ders, &mut pool_key);
                let certs: Vec<WrappedX509> = ders
                    .iter()
                    .map(|d| WrappedX509::new(d.clone(), pingora_core::utils::tls::parse_x509))
                    .collect();
                Some(Arc::from(certs.into_boxed_slice()))
            }
            Some(Err(m)) => {
                errs.push(ConfigError::new(format!("{p}.ca_file"), m.as_str()));
                None
            }
            None => None,
        };
        let default_port = if target.tls { 443 } else { 80 };
        let host_header = match (u.builtin.is_some(), addr.port() == default_port) {
            (true, _) => addr.to_string(),
            (false, true) => target.host.clone(),
            (false, false) if target.host.contains(':') => {
                format!("[{}]:{}", target.host, addr.port())
            }
            (false, false) => format!("{}:{}", target.host, addr.port()),
        };
        let Ok(host_value) = HeaderValue::from_str(&host_header) else {
            errs.push(ConfigError::new(
                format!("{p}.url"),
                "the host is not a valid header",
            ));
            return None;
        };
        Some(UpstreamRt {
            name: u.name.clone(),
            addr,
            tls: target.tls,
            host_header,
            host_value,
            host: target.host,
            base_path: target.base_path,
            credential,
            anthropic,
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            idle_timeout: Duration::from_millis(u.idle_timeout_ms),
            ca,
            pool_key: std::hash::Hasher::finish(&pool_key),
            health,
            health_check: u.health_check.clone(),
        })
    }
}

/// The upstream's own key from `api_key_env`, as the header it travels in (never logged).
fn credential(
    p: &str,
    u: &UpstreamConfig,
    anthropic: bool,
    errs: &mut Vec<ConfigError>,
) -> Option<(&'static str, HeaderValue)> {
    match &u.api_key_env {
        Some(env) => match std::env::var(env) {
            Ok(key) if !key.is_empty() => {
                let (name, value) = if anthropic {
                    ("x-api-key", key)
                } else {
                    ("authorization", format!("Bearer {key}"))
                };
                match HeaderValue::from_str(&value) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        Some((name, v))
                    }
                    Err(_) => {
                        errs.push(ConfigError::new(
                            format!("{p}.api_key_env"),
                            format!("${env} holds characters a header cannot carry"),
                        ));
                        None
                    }
                }
            }
            _ => {
                errs.push(ConfigError::new(
                    format!("{p}.api_key_env"),
                    format!("environment variable {env} is not set"),
                ));
                None
            }
        },
        None => None,
    }
}
