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
