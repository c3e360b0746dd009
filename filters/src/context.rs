//! The per-request context every filter shares.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderName, HeaderValue, StatusCode};

use crate::api::{self, Api, ApiRoute};
use crate::Identity;

/// Which of the contract's routes a request is on: a governed API (what sets it apart is its
/// [`ApiRoute`], registered in [`api::GOVERNED`]) or one of the engine's own routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// A governed API: chat completions, Responses, completions, embeddings, Messages, …
    Api(&'static ApiRoute),
    ListModels,
    GetModel,
    AgentRun,
    AgentRunStatus,
    /// `/v1/keys`: the caller's own API keys (list, create).
    Keys,
    /// `/v1/keys/{id}`: one of them (get, revoke).
    Key,
    /// `GET /v1/usage`: the caller's own spend (SPEC §15).
    Usage,
    /// Any other `/v1/*` path, forwarded as is.
    Passthrough,
    /// Outside `/v1/`: answered 404 by the engine.
    Unknown,
    /// `GET /`, `HEAD /`: the engine's own answer to clients checking they reach a server
    /// (no chain, no audit record).
    Root,
    /// `/mcp/{server}`: MCP's Streamable HTTP transport to a configured MCP server.
    Mcp,
}

impl Route {
    /// The engine's own routes (every variant but [`Route::Api`]).
    pub const ENGINE: [Route; 11] = [
        Route::ListModels,
        Route::GetModel,
        Route::AgentRun,
        Route::AgentRunStatus,
        Route::Passthrough,
        Route::Unknown,
        Route::Keys,
        Route::Key,
        Route::Root,
        Route::Mcp,
        Route::Usage,
    ];

    /// Every route: the governed APIs, then the engine's own. The metrics are pre-initialised
    /// for each, so every label is on the first scrape.
    pub fn all() -> impl Iterator<Item = Route> {
        api::GOVERNED
            .iter()
            .map(|r| Route::Api(r))
            .chain(Route::ENGINE)
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Route::Api(r) => r.label,
            Route::ListModels => "models",
            Route::GetModel => "model",
            Route::AgentRun => "agent_run",
            Route::AgentRunStatus => "agent_run_status",
            Route::Keys => "keys",
            Route::Key => "key",
            Route::Usage => "usage",
            Route::Passthrough => api::passthrough::ROUTE.label,
            Route::Unknown => "unknown",
            Route::Root => "root",
            Route::Mcp => "mcp",
        }
    }

    /// The route's requests reach a model: they carry a model, a stream flag and a token
    /// ceiling, reserve tokens and have model metrics. False for the routes Sluice answers
    /// itself without a model.
    pub fn reaches_model(self) -> bool {
        !matches!(
            self,
            Route::ListModels
                | Route::GetModel
                | Route::AgentRunStatus
                | Route::Keys
                | Route::Key
                | Route::Usage
                | Route::Unknown
                | Route::Root
        )
    }

    /// The routes authorized by the model they name, with their rules: a governed API's own,
    /// or passthrough's ([`api::passthrough::ROUTE`]).
    pub fn api_route(self) -> Option<&'static ApiRoute> {
        match self {
            Route::Api(r) => Some(r),
            Route::Passthrough => Some(&api::passthrough::ROUTE),
            _ => None,
        }
    }

    /// Its clients are Anthropic's (they authenticate with `x-api-key`).
    pub fn anthropic(self) -> bool {
        matches!(self, Route::Api(r) if r.anthropic)
    }
}

/// How a request ended, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    DeniedAuth,
    DeniedPermission,
    RateLimited,
    DlpBlocked,
    /// Refused by a budget (SPEC §15).
    BudgetExceeded,
    BadRequest,
    UpstreamError,
    ClientClosed,
    InternalError,
    /// Refused, or not completed, because the audit trail could not be written.
    AuditUnavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::DeniedAuth => "denied_auth",
            Outcome::DeniedPermission => "denied_permission",
            Outcome::RateLimited => "rate_limited",
            Outcome::DlpBlocked => "dlp_blocked",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::BadRequest => "bad_request",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientClosed => "client_closed",
            Outcome::InternalError => "internal_error",
            Outcome::AuditUnavailable => "audit_unavailable",
        }
    }

    /// The outcome of an error Sluice answers itself.
    pub fn for_error(status: StatusCode, code: &str) -> Outcome {
        match (status.as_u16(), code) {
            (_, "dlp_blocked") => Outcome::DlpBlocked,
            (_, "budget_exceeded") => Outcome::BudgetExceeded,
            (_, "rate_limit_unavailable") => Outcome::RateLimited,
            (_, "audit_unavailable") => Outcome::AuditUnavailable,
            (401, _) => Outcome::DeniedAuth,
            (403, _) => Outcome::DeniedPermission,
            // The client was too slow: its failure, not Sluice's.
            (408, _) => Outcome::ClientClosed,
            (429, _) => Outcome::RateLimited,
            (502 | 504, _) => Outcome::UpstreamError,
            (500..=599, _) => Outcome::InternalError,
            _ => Outcome::BadRequest,
        }
    }
}

/// Token usage as the upstream reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// How many of `prompt_tokens` the upstream served from its prompt cache (charged at
    /// `cached_input_per_mtok` when the model has one).
    pub cached_prompt_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Reads `{"prompt_tokens", "completion_tokens"}` from an OpenAI `usage` object (or
    /// `input_tokens`/`output_tokens`, as the Responses and Messages APIs name them).
    pub fn from_json(v: &serde_json::Value) -> Option<Usage> {
        if v.get("prompt_tokens").is_none() && v.get("completion_tokens").is_none() {
            return api::usage_any(v);
        }
        let obj = v.as_object()?;
        let get = |k: &str| obj.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        Some(Usage {
            prompt_tokens: get("prompt_tokens"),
            completion_tokens: get("completion_tokens"),
            cached_prompt_tokens: api::cached_prompt_tokens(obj).unwrap_or(0),
        })
    }
}

/// One DLP detector's findings on one direction of one request: never the matched text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlpFinding {
    /// The detector's stable name (`aws_access_key`, `email`, a custom rule's name, …).
    pub detector: String,
    /// `request` or `response`.
    pub direction: &'static str,
    /// `block`, `redact`, `mask` or `monitor`.
    pub action: &'static str,
    pub count: u32,
}

/// The typed facts filters share about one request.
pub struct Cx {
    pub request_id: String,
    /// When the request arrived (monotonic) and its wall-clock time.
    pub started: Instant,
    pub started_at: SystemTime,
    pub method: http::Method,
    /// The path without the query string.
    pub path: String,
    /// The query string (without `?`), as it goes upstream: the `dlp` filter may rewrite it.
    pub query: Option<String>,
    pub route: Route,
    /// The API of the route: how its bodies, answers, streams and errors are shaped. Filters
    /// ask it instead of reading provider JSON themselves.
    pub api: &'static dyn Api,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The model the client asked for (the configured name, before any upstream rename).
    pub model: Option<String>,
    /// A model the client named that is not configured (for the audit record only: it is
    /// client text, never a metric label).
    pub unknown_model: Option<String>,
    /// The upstream of the current attempt: once the request is answered, the one that
    /// answered (or the last one tried).
    pub upstream: Option<String>,
    /// How many upstream attempts the request took (0: it never reached an upstream).
    pub attempts: u32,
    pub agent_id: Option<String>,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    /// Whether the client itself asked for `stream_options.include_usage`.
    pub client_wants_stream_usage: bool,
    /// The route's output ceiling (`max_tokens`, `max_completion_tokens`, `max_output_tokens`)
    /// when the request gives one.
    pub max_tokens: Option<u64>,
    /// How many answers the request asks for (`n`), at least 1.
    pub choices: u64,
    /// Set by the auth filter.
    pub identity: Option<Identity>,
    /// How the caller authenticated, when not with an API key (`"session"`: the console).
    pub auth: Option<&'static str>,
    /// Set by the engine from the upstream's `usage` (non-streamed body or stream usage chunk).
    pub usage: Option<Usage>,
    /// Set by the DLP filter.
    pub dlp: Vec<DlpFinding>,
    /// Headers every response to this request carries (rate-limit headers), local replies
    /// included.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// A filter's own per-request state, by type.
    pub extensions: http::Extensions,
    /// Set by the engine right after it ran [`crate::Filter::on_response_complete`] for the
    /// chain (the client is being sent a complete response), so that `on_log` can skip work
    /// done there — also for filters whose `on_request_head` never ran because an earlier
    /// filter answered from the headers.
    pub response_completed: bool,
}

impl Cx {
    pub fn new(request_id: String, method: http::Method, path: String) -> Cx {
        Cx {
            request_id,
            started: Instant::now(),
            started_at: SystemTime::now(),
            method,
            path,
            query: None,
            route: Route::Unknown,
            api: &api::PASSTHROUGH,
            client_ip: None,
            user_agent: None,
            unknown_model: None,
            model: None,
            upstream: None,
            attempts: 0,
            agent_id: None,
            stream: false,
            client_wants_stream_usage: false,
            max_tokens: None,
            choices: 1,
            identity: None,
            auth: None,
            usage: None,
            dlp: Vec::new(),
            response_headers: Vec::new(),
            extensions: http::Extensions::new(),
            response_completed: false,
        }
    }

    /// Adds `count` findings of `detector` to the request's tally.
    pub fn record_dlp(
        &mut self,
        detector: &str,
        direction: &'static str,
        action: &'static str,
        count: u32,
    ) {
        if let Some(f) = self
            .dlp
            .iter_mut()
            .find(|f| f.detector == detector && f.direction == direction && f.action == action)
        {
            f.count += count;
        } else {
            self.dlp.push(DlpFinding {
                detector: detector.to_string(),
                direction,
                action,
                count,
            });
        }
    }

    /// Sets (or replaces) a header every response to this request carries.
    pub fn set_response_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.response_headers.retain(|(n, _)| n != name);
        self.response_headers.push((name, value));
    }
}

/// Marks, in [`Cx::extensions`], an identity the engine established itself before the chain
/// ran (the background execution of an asynchronous agent run, on behalf of the caller who
/// started it). The auth filter keeps such an identity instead of asking for a key.
#[derive(Debug, Clone, Copy)]
pub struct PreAuthenticated;

/// How a request ended, for [`crate::Filter::on_log`].
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The status the client received (0 when it never received one).
    pub status: u16,
    pub outcome: Outcome,
    /// From arrival to the last byte sent (or the failure).
    pub latency: Duration,
    /// From the upstream request to the upstream's last byte, when the upstream was contacted.
    pub upstream_latency: Option<Duration>,
    /// The contract error code when Sluice answered an error itself.
    pub error_code: Option<&'static str>,
}
