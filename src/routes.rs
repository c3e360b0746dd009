//! The route table, path normalization, and the routes Sluice answers itself.
//!
//! Every governed API is one [`sluice_filters::api::ApiRoute`] registered in
//! [`api::GOVERNED`]: its path under `/v1/`, the methods that reach it and its [`Api`] (the
//! module that knows its shape). Adding an API is a module in `sluice_filters::api` and its
//! registration there; nothing here changes.
//!
//! Paths are normalized before they are matched ([`normalize`]): escapes of unreserved
//! characters are decoded, dot segments resolved, repeated slashes collapsed, and escaped
//! slashes, backslashes and control bytes refused. A governed route matches whatever its
//! spelling (letter case, a trailing slash) and is forwarded under its canonical path; any other
//! path is forwarded as normalized, so it can never climb above the upstream URL's own path.

use std::borrow::Cow;

use http::Method;
use serde_json::{json, Value};
use sluice_filters::api::{self, Api};
use sluice_filters::{Identity, Reply, Route};

use crate::config::Config;

/// A matched request path.
pub struct RouteMatch<'p> {
    pub route: Route,
    pub api: &'static dyn Api,
    /// The model or agent id in the path.
    pub id: Option<&'p str>,
    /// The run id of `GET /v1/agents/{agentId}/runs/{runId}`.
    pub run_id: Option<&'p str>,
    /// The path to forward: a governed route's canonical spelling, else the normalized path.
    pub canonical: Option<String>,
}

impl<'p> RouteMatch<'p> {
    fn new(route: Route, api: &'static dyn Api) -> RouteMatch<'p> {
        RouteMatch {
            route,
            api,
            id: None,
            run_id: None,
            canonical: None,
        }
    }
}

/// The route of a normalized path.
pub fn match_route<'p>(method: &Method, path: &'p str) -> RouteMatch<'p> {
    if path == "/" && (method == Method::GET || method == Method::HEAD) {
        return RouteMatch::new(Route::Root, &api::PASSTHROUGH);
    }
    if let Some(server) = crate::mcp::server_of(path) {
        let mut m = RouteMatch::new(Route::Mcp, &sluice_filters::mcp::MCP);
        m.id = Some(server);
        return m;
    }
    let Some(rest) = strip_prefix_ci(path, "/v1/") else {
        return RouteMatch::new(Route::Unknown, &api::PASSTHROUGH);
    };
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    for &r in api::GOVERNED {
        let (p, method_ok) = (r.path, method == Method::POST || !r.post_only);
        if method_ok && trimmed.eq_ignore_ascii_case(p) {
            let mut m = RouteMatch::new(Route::Api(r), r.api);
            if path.len() != p.len() + 4 || !path.ends_with(p) || !path.starts_with("/v1/") {
                m.canonical = Some(format!("/v1/{p}"));
            }
            return m;
        }
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let mut m = RouteMatch::new(Route::Passthrough, &api::PASSTHROUGH);
    match (method, segs.as_slice()) {
        (&Method::GET, ["models"] | ["models", ""]) => m.route = Route::ListModels,
        (&Method::GET, ["models", id @ ..])
            if !id.is_empty() && !id.iter().any(|s| s.is_empty()) =>
        {
            // Model ids may contain `/` (`meta-llama/Llama-3`): the id is the rest of the path.
            m.route = Route::GetModel;
            m.id = Some(&rest["models/".len()..]);
        }
        (&Method::POST, ["agents", id, "run"] | ["agents", id, "run", ""]) if !id.is_empty() => {
            m.route = Route::AgentRun;
            m.api = &api::CHAT;
            m.id = Some(*id);
        }
        (&Method::GET, ["agents", id, "runs", run] | ["agents", id, "runs", run, ""])
            if !id.is_empty() && !run.is_empty() =>
        {
            m.route = Route::AgentRunStatus;
            m.id = Some(*id);
            m.run_id = Some(*run);
        }
        (_, ["keys"] | ["keys", ""]) => m.route = Route::Keys,
        (&Method::GET, ["usage"] | ["usage", ""]) => m.route = Route::Usage,
        (_, ["keys", id] | ["keys", id, ""]) if !id.is_empty() => {
            m.route = Route::Key;
            m.id = Some(*id);
        }
        _ => {}
    }
    m
}

fn strip_prefix_ci<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let head = path.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &path[prefix.len()..])
}

/// Normalizes a request path (RFC 3986 §6.2.2): escapes of unreserved characters decoded
/// (`%63` → `c`, `%2E` → `.`), other escapes kept in upper case, dot segments resolved,
/// repeated slashes collapsed. Refused (400): a path that is not absolute, that climbs above
/// the root, or that holds an escaped slash or backslash, a raw backslash or a control byte —
/// spellings a hop behind Sluice could read differently.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Reply> {
    if has_parameters(path) {
        // No route takes `;` parameters, and servlet-style upstreams strip them: forwarded,
        // `/v1/chat/completions;x` would be passthrough here and chat there. Escaped (`%3B`)
        // too: a framework that decodes before it strips would read the same.
        return Err(Reply::error(
            400,
            "invalid_path",
            "The request path is not accepted: it carries `;` parameters (raw or as `%3B`), which no route uses.",
        ));
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let bad = |why: &str| {
        Reply::error(
            400,
            "invalid_path",
            format!("The request path is not accepted: {why}."),
        )
    };
    if !path.starts_with('/') {
        return Err(bad("it must start with `/`"));
    }
    let decoded = decode_unreserved(path).map_err(&bad)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" if i != last => {}
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(bad("its `..` segments climb above the root"));
                }
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut joined = String::with_capacity(decoded.len());
    for s in &out {
        joined.push('/');
        joined.push_str(s);
    }
    if trailing || joined.is_empty() {
        joined.push('/');
    }
    Ok(Cow::Owned(joined))
}

/// Whether a path holds a `;`, raw or percent-encoded.
fn has_parameters(path: &str) -> bool {
    path.contains(';')
        || path
            .as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'3' && w[2].eq_ignore_ascii_case(&b'b'))
}

/// Whether a path is already normal (the usual case, decided in one pass): absolute, no escape,
/// backslash or control byte, no empty, `.` or `..` segment.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c <= 0x20 || c == 0x7f || c == b'%' || c == b'\\' {
            return false;
        }
        if c == b'/' {
            let seg_end = b[i + 1..]
                .iter()
                .position(|&x| x == b'/')
                .map_or(b.len(), |p| i + 1 + p);
            let seg = &b[i + 1..seg_end];
            // An empty segment is fine only as the trailing slash.
            if (seg.is_empty() && seg_end != b.len()) || seg == b"." || seg == b".." {
                return false;
            }
        }
        i += 1;
    }
    true
}

/// Decodes `%XX` escapes of unreserved characters; keeps the others (upper case).
fn decode_unreserved(path: &str) -> Result<String, &'static str> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c <= 0x20 || c == 0x7f {
            return Err("it holds a space or a control character");
        }
        if c == b'\\' {
            return Err("it holds a backslash");
        }
        if c != b'%' {
            // The path came from a valid URI: ASCII only.
            out.push(c as char);
            i += 1;
            continue;
        }
        let hex = |x: u8| (x as char).to_digit(16);
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("it holds a malformed `%` escape");
        };
        let v = (h * 16 + l) as u8;
        match v {
            b'/' | b'\\' => return Err("it holds an escaped slash or backslash"),
            0..=0x20 | 0x7f if v != b' ' => return Err("it holds an escaped control character"),
            _ if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(v as char),
            _ => out.push_str(&format!("%{v:02X}")),
        }
        i += 3;
    }
    Ok(out)
}

/// Whether the caller may see a model (no identity: no auth filter, everything is visible).
pub fn visible(identity: Option<&Identity>, model: &str) -> bool {
    identity.is_none_or(|i| i.grants.may_use_model(model))
}

fn model_object(name: &str, owned_by: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": owned_by})
}

/// `GET /v1/models`: the configured models the caller may use.
pub fn list_models(config: &Config, identity: Option<&Identity>) -> Value {
    let data: Vec<Value> = config
        .models
        .iter()
        .filter(|m| visible(identity, &m.name))
        .map(|m| model_object(&m.name, &m.owned_by))
        .collect();
    json!({"object": "list", "data": data})
}

/// `GET /v1/models/{id}`: the model, when it exists and the caller may use it.
pub fn get_model(config: &Config, identity: Option<&Identity>, id: &str) -> Option<Value> {
    config
        .models
        .iter()
        .find(|m| m.name == id && visible(identity, &m.name))
        .map(|m| model_object(&m.name, &m.owned_by))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(m: Method, p: &str) -> Route {
        match_route(&m, p).route
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(Method::POST, "/v1/chat/completions"),
            Route::Api(&api::chat::ROUTE)
        );
        assert_eq!(
            route(Method::POST, "/v1/responses"),
            Route::Api(&api::responses::ROUTE)
        );
        assert_eq!(
            route(Method::POST, "/v1/completions"),
            Route::Api(&api::completions::ROUTE)
        );
        assert_eq!(
            route(Method::POST, "/v1/messages"),
            Route::Api(&api::messages::ROUTE)
        );
        assert_eq!(
            route(Method::POST, "/v1/messages/count_tokens"),
            Route::Api(&api::messages::COUNT_TOKENS_ROUTE)
        );
        assert_eq!(route(Method::GET, "/v1/models"), Route::ListModels);
        let m = match_route(&Method::GET, "/v1/models/a/b");
        assert_eq!((m.route, m.id), (Route::GetModel, Some("a/b")));
        let m = match_route(&Method::POST, "/v1/agents/x/run");
        assert_eq!((m.route, m.id), (Route::AgentRun, Some("x")));
        let m = match_route(&Method::GET, "/v1/agents/x/runs/r1");
        assert_eq!(
            (m.route, m.id, m.run_id),
            (Route::AgentRunStatus, Some("x"), Some("r1"))
        );
        assert_eq!(
            route(Method::POST, "/v1/embeddings"),
            Route::Api(&api::embeddings::ROUTE)
        );
        assert_eq!(route(Method::POST, "/v1/audio/speech"), Route::Passthrough);
        assert_eq!(route(Method::GET, "/healthz"), Route::Unknown);
        assert_eq!(route(Method::POST, "/v1/keys"), Route::Keys);
        let m = match_route(&Method::DELETE, "/v1/keys/key_1");
        assert_eq!((m.route, m.id), (Route::Key, Some("key_1")));
    }

    #[test]
    fn every_registered_api_is_its_own_route() {
        for &r in api::GOVERNED {
            let path = format!("/v1/{}", r.path);
            let m = match_route(&Method::POST, &path);
            assert_eq!(m.route, Route::Api(r), "{path}");
            assert!(m.canonical.is_none(), "{path}");
            let upper = path.to_uppercase();
            let m = match_route(&Method::POST, &upper);
            assert_eq!(m.canonical.as_deref(), Some(path.as_str()), "{upper}");
            let get = match_route(&Method::GET, &path).route;
            assert_eq!(get == Route::Api(r), !r.post_only, "{path}");
        }
    }

    #[test]
    fn equivalent_spellings_are_the_governed_route() {
        for p in [
            "/v1/chat/completions/",
            "/V1/Chat/Completions",
            "/v1/CHAT/completions/",
        ] {
            let m = match_route(&Method::POST, p);
            assert_eq!(m.route, Route::Api(&api::chat::ROUTE), "{p}");
            assert_eq!(m.canonical.as_deref(), Some("/v1/chat/completions"), "{p}");
        }
        assert!(match_route(&Method::POST, "/v1/chat/completions")
            .canonical
            .is_none());
        assert_eq!(
            route(Method::POST, "/v1/responses/"),
            Route::Api(&api::responses::ROUTE)
        );
    }

    #[test]
    fn normalization() {
        let n = |p: &str| normalize(p).map(|c| c.into_owned()).map_err(|r| r.status);
        assert_eq!(
            n("/v1/chat/completions").as_deref(),
            Ok("/v1/chat/completions")
        );
        assert_eq!(
            n("//v1///chat/completions").as_deref(),
            Ok("/v1/chat/completions")
        );
        assert_eq!(
            n("/v1/x/../chat/./completions").as_deref(),
            Ok("/v1/chat/completions")
        );
        assert_eq!(
            n("/v1/%2e%2E/v1/chat/%63ompletions").as_deref(),
            Ok("/v1/chat/completions")
        );
        assert_eq!(n("/v1/models/").as_deref(), Ok("/v1/models/"));
        assert_eq!(n("/v1/a%20b").as_deref(), Ok("/v1/a%20b"));
        assert_eq!(
            n("/v1/a%2fb").map(|_| ()),
            Err(http::StatusCode::BAD_REQUEST)
        );
        assert!(n("/v1/a%5Cb").is_err());
        assert!(n("/v1/../../tenantB/v1/chat/completions").is_err());
        assert!(n("/v1/%zz").is_err());
        assert!(n("/v1/a\\b").is_err());
        assert_eq!(n("/v1/..").as_deref(), Ok("/"));
        for p in ["/v1/chat/completions;x", "/v1/a%3Bb", "/v1/a%3b", "/v1;/x"] {
            assert!(n(p).is_err(), "{p}");
        }
        assert_eq!(n("/v1/a%3Cb%33B").as_deref(), Ok("/v1/a%3Cb3B"));
    }
}
