//! The TOML config: parsing, validation with field paths, and address resolution.
//!
//! Every problem is reported, each with the path of the field that holds it
//! (`models[3].upstream: no upstream named "x"`), so `sluice check` shows them all at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_filters::audit::AuditSettings;
use sluice_filters::dlp::DlpSettings;
use sluice_filters::policy::{KeyConfig, OrgConfig, RoleConfig, UserConfig};
use sluice_filters::ratelimit::RateLimitSettings;
// One error type for the whole load: the file, the snapshot and every filter report with it.
use sluice_filters::config::toml_paths::{fix_path, toml_error};
use sluice_filters::ConfigError;
pub use sluice_filters::ConfigErrors;

// The `[[upstreams]]` and `[[models]]` entries are the upstream module's (it validates them).
pub use crate::agents::config::AgentConfig;
pub use crate::upstream::config::{ModelConfig, UpstreamApi, UpstreamConfig};

mod sections;
pub(crate) mod upstream_url;
use sections::BuiltSections;
pub use upstream_url::{load_ca_file, parse_url, CheckedUpstream, UpstreamTarget};

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub orgs: Vec<OrgConfig>,
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    #[serde(default)]
    pub dlp: DlpSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    #[serde(default)]
    pub agent_runs: crate::agents::config::AgentRunsConfig,
    #[serde(default)]
    pub filters: Vec<toml::Table>,
    /// Where keys made through the key API live (SPEC §12).
    #[serde(default)]
    pub store: crate::store::StoreConfig,
    /// Retries, failover and ejection among a model's targets (SPEC §11).
    #[serde(default)]
    pub routing: crate::upstream::config::RoutingConfig,
    /// OpenTelemetry traces (SPEC §7); absent: none.
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    /// The web console at `/console/` (SPEC §14).
    #[serde(default)]
    pub console: crate::console::config::ConsoleConfig,
    /// MCP servers governed at `/mcp/{server}` (SPEC §16).
    #[serde(default)]
    pub mcp_servers: Vec<crate::mcp::config::McpServerConfig>,
    /// The organisation's OpenID Connect provider (SPEC §13); absent: users come from the
    /// config only.
    #[serde(default)]
    pub identity: Option<crate::identity::IdentityConfig>,
    /// The top-level tables no field here names (`[quota]`): each is a filter type's own section
    /// ([`sluice_filters::FilterFactory::section`]), handed to it as written; building the
    /// snapshot, which knows the registered types, reports one that none owns as `NAME: unknown
    /// key`.
    #[serde(skip)]
    pub filter_sections: toml::Table,
    /// Cached views for [`Config::policy`].
    #[serde(skip)]
    model_names: Vec<String>,
    #[serde(skip)]
    agent_ids: Vec<String>,
    /// The price of every priced model (SPEC §15), by name.
    #[serde(skip)]
    pub prices: std::collections::HashMap<String, sluice_filters::spend::Price>,
    /// Each upstream's URL and CA file as loading found them (see [`Config::checked_upstream`]).
    #[serde(skip)]
    checked_upstreams: Vec<CheckedUpstream>,
    /// Each MCP server's URL as loading found it (see [`Config::checked_mcp_server`]).
    #[serde(skip)]
    checked_mcp_servers: Vec<CheckedUpstream>,
    /// `[rate_limit]`, `[dlp]` and `[audit]` as loading built them (building is their check).
    #[serde(skip)]
    built: BuiltSections,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: usize,
    /// Largest non-streamed response body Sluice holds for filters that scan whole bodies;
    /// a larger one is not delivered (fail closed).
    #[serde(default = "default_max_response")]
    pub max_response_body_bytes: usize,
    /// Largest single SSE event Sluice frames.
    #[serde(default = "default_max_event")]
    pub max_sse_event_bytes: usize,
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// A request head must arrive within this (from its first byte).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// A request body must arrive within this (from the end of its head).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// A connection idle between requests is closed after this.
    #[serde(default = "default_keepalive_idle")]
    pub keepalive_idle_seconds: u64,
    /// The environment variable holding the admin token: it enables `/admin/v1/keys` and is
    /// then required by every state-changing admin route (`POST /admin/reload` included).
    pub admin_token_env: Option<String>,
    /// Send the client's address upstream as `X-Forwarded-For` (the client's own
    /// `Forwarded`/`X-Forwarded-*` headers never go upstream).
    #[serde(default)]
    pub forward_client_ip: bool,
    /// Upstream response headers never passed to the client (`Server` never is).
    #[serde(default)]
    pub hide_response_headers: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_threads() -> usize {
    2
}
fn default_max_body() -> usize {
    4 * 1024 * 1024
}
fn default_max_response() -> usize {
    16 * 1024 * 1024
}
fn default_max_event() -> usize {
    1024 * 1024
}
fn default_grace() -> u64 {
    30
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_keepalive_idle() -> u64 {
    60
}

impl Config {
    /// Reads and validates a config file, reporting at once (with the file's other errors) each
    /// top-level table that `owned` says no filter type owns: the gateway knows its types when
    /// it loads a file (`GatewayBuilder::load` for a command that needs only the data).
    pub(crate) fn load_owned(
        path: &Path,
        owned: &dyn Fn(&str) -> bool,
    ) -> Result<Config, ConfigErrors> {
        let text = std::fmt::format(format_args!("{}", path.display()));
        let src = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![ConfigError::new(text, format!("cannot read: {e}"))]))?;
        Config::parse_owned(&src, owned)
    }

    /// Parses and validates config text. A top-level table no field names is kept for the
    /// filter type that owns it ([`Config::filter_sections`]); the snapshot build reports one
    /// that none owns.
    pub fn parse(src: &str) -> Result<Config, ConfigErrors> {
        Config::parse_owned(src, &|_| true)
    }

    fn parse_owned(src: &str, owned: &dyn Fn(&str) -> bool) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let de = toml::Deserializer::new(src);
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> =
            serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
        // A top-level table is kept for the filter type that owns it (checked again when the
        // snapshot is built); any other unknown key is an error now.
        let mut tables = toml::Table::new();
        let mut whole: Option<toml::Table> = None;
        for p in unknown {
            if !p.contains('.') && owned(&p) {
                let doc = whole.get_or_insert_with(|| toml::from_str(src).unwrap_or_default());
                if let Some(t @ toml::Value::Table(_)) = doc.remove(&p) {
                    tables.insert(p, t);
                    continue;
                }
            }
            errs.push(ConfigError::new(fix_path(&p), "unknown key"));
        }
        let mut cfg = match parsed {
            Ok(c) => c,
            Err(e) => {
                errs.push(toml_error(src, &e));
                return Err(ConfigErrors(errs));
            }
        };
        cfg.filter_sections = tables;
        cfg.model_names = cfg.models.iter().map(|m| m.name.clone()).collect();
        cfg.agent_ids = cfg.agents.iter().map(|a| a.id.clone()).collect();
        for (i, m) in cfg.models.iter().enumerate() {
            if let Some(p) = &m.price {
                let before = errs.len();
                p.validate(&format!("models[{i}].price"), &mut errs);
                if errs.len() == before {
                    cfg.prices.insert(m.name.clone(), p.price());
                }
            }
        }
        cfg.checked_upstreams = cfg
            .upstreams
            .iter()
            .map(|u| CheckedUpstream::of(u.url.as_deref(), u.ca_file.as_deref()))
            .collect();
        cfg.checked_mcp_servers = cfg
            .mcp_servers
            .iter()
            .map(|s| CheckedUpstream::of(Some(&s.url), None))
            .collect();
        cfg.validate(&mut errs);
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Upstream `i`'s URL and CA file as loading parsed, resolved and read them; made again only
    /// if the entry changed since (an embedder's edit).
    pub fn checked_upstream(&self, i: usize) -> std::borrow::Cow<'_, CheckedUpstream> {
        let u = &self.upstreams[i];
        let (url, ca) = (u.url.as_deref(), u.ca_file.as_deref());
        match self.checked_upstreams.get(i) {
            Some(c) if c.is_of(url, ca) => std::borrow::Cow::Borrowed(c),
            _ => std::borrow::Cow::Owned(CheckedUpstream::of(url, ca)),
        }
    }

    /// MCP server `i`'s URL as loading parsed and resolved it; made again only if it changed
    /// since.
    pub fn checked_mcp_server(&self, i: usize) -> std::borrow::Cow<'_, CheckedUpstream> {
        let url = Some(self.mcp_servers[i].url.as_str());
        match self.checked_mcp_servers.get(i) {
            Some(c) if c.is_of(url, None) => std::borrow::Cow::Borrowed(c),
            _ => std::borrow::Cow::Owned(CheckedUpstream::of(url, None)),
        }
    }

    fn validate(&mut self, errs: &mut Vec<ConfigError>) {
        self.server.validate(errs);
        let checked: Vec<_> = (0..self.upstreams.len())
            .map(|i| self.checked_upstream(i))
            .collect();
        crate::upstream::config::validate_upstreams(&self.upstreams, &checked, errs);
        crate::upstream::config::validate_models(&self.models, &self.upstreams, errs);
        crate::upstream::config::validate_routing(&self.routing, errs);
        crate::agents::config::validate(&self.agents, &self.model_names, &self.agent_runs, errs);
        validate_filter_entries(&self.filters, errs);
        self.build_sections(errs);
        self.store.validate(errs);
        if let Some(t) = &self.telemetry {
            t.validate(errs);
        }
        self.console.validate(errs);
        let checked: Vec<_> = (0..self.mcp_servers.len())
            .map(|i| self.checked_mcp_server(i))
            .collect();
        let directory = (self.roles.as_slice(), self.keys.as_slice());
        crate::mcp::config::validate(&self.mcp_servers, &checked, directory, errs);
        if let Some(i) = &self.identity {
            i.validate(&self.orgs, &self.roles, errs);
        }
    }
}

impl ServerConfig {
    fn validate(&self, errs: &mut Vec<ConfigError>) {
        let s = self;
        for (field, v) in [("listen", &s.listen), ("admin_listen", &s.admin_listen)] {
            if let Err(m) = check_listen(v) {
                errs.push(ConfigError::new(format!("server.{field}"), m));
            }
        }
        if s.listen == s.admin_listen {
            errs.push(ConfigError::new(
                "server.admin_listen",
                "must differ from server.listen: admin routes are never public",
            ));
        }
        if let Some(env) = &s.admin_token_env {
            if env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                errs.push(ConfigError::new(
                    "server.admin_token_env",
                    "must be an environment variable name (e.g. SLUICE_ADMIN_TOKEN)",
                ));
            }
        }
        if s.threads == 0 || s.threads > 1024 {
            errs.push(ConfigError::new(
                "server.threads",
                "must be between 1 and 1024",
            ));
        }
        if s.max_request_body_bytes == 0 {
            errs.push(ConfigError::new(
                "server.max_request_body_bytes",
                "must be at least 1",
            ));
        }
        if s.max_response_body_bytes == 0 {
            errs.push(ConfigError::new(
                "server.max_response_body_bytes",
                "must be at least 1",
            ));
        }
        for (field, v) in [
            ("header_timeout_ms", s.header_timeout_ms),
            ("body_timeout_ms", s.body_timeout_ms),
            ("keepalive_idle_seconds", s.keepalive_idle_seconds),
        ] {
            if v == 0 {
                errs.push(ConfigError::new(
                    format!("server.{field}"),
                    "must be at least 1",
                ));
            }
        }
        if s.max_sse_event_bytes < 1024 {
            errs.push(ConfigError::new(
                "server.max_sse_event_bytes",
                "must be at least 1024",
            ));
        }
        for (i, h) in s.hide_response_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(ConfigError::new(
                    format!("server.hide_response_headers[{i}]"),
                    "must be an HTTP header name",
                ));
            }
        }
    }
}

/// Each `[[filters]]` entry names its type (what the type is, the chain checks when it builds).
fn validate_filter_entries(filters: &[toml::Table], errs: &mut Vec<ConfigError>) {
    for (i, f) in filters.iter().enumerate() {
        match f.get("type") {
            Some(toml::Value::String(_)) => {}
            Some(_) => errs.push(ConfigError::new(
                format!("filters[{i}].type"),
                "must be a string",
            )),
            None => errs.push(ConfigError::new(
                format!("filters[{i}].type"),
                "missing (auth, rate_limit, dlp, audit or a registered custom type)",
            )),
        }
    }
}

fn check_listen(v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>()
        .map_err(|_| format!("`{v}` is not an address like 127.0.0.1:8080"))
}

/// The config file `sluice run`/`check` use: `-c`, else `$SLUICE_CONFIG`, else `conf/sluice.toml`.
pub fn default_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("SLUICE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("conf/sluice.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_top_level_tables_are_kept_for_their_filter_type() {
        let base = "[server]\n[[upstreams]]\nname = \"m\"\nbuiltin = \"mock\"\n";
        let c =
            Config::parse(&format!("{base}[quota]\nmax = 1\n")).unwrap_or_else(|e| panic!("{e}"));
        assert!(c
            .filter_sections
            .get("quota")
            .is_some_and(toml::Value::is_table));
        let e = Config::parse(&format!("quota = 1\n{base}"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("quota: unknown key"));
        let e = Config::parse_owned(&format!("{base}[quota]\nmax = 1\n"), &|_| false);
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("quota: unknown key")
        );
    }

    #[test]
    fn url_parsing() {
        let t = parse_url("http://127.0.0.1:8000/v1base/").unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.tls);
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.base_path, "/v1base");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://127.0.0.1:notaport").is_err());
    }
}
