//! The web console at `/console/` on the public listener (SPEC §14).
//!
//! Server-rendered pages (compile-time `maud` templates, so every value is HTML-escaped by
//! construction), a stylesheet and a small script embedded in the binary (no CDN, no build
//! step, no inline script or style: the Content-Security-Policy is `default-src 'self'`), and
//! sessions in the store ([`session`]). Console requests are not model calls: the filter chain
//! does not run on them (no DLP scan of a pasted key, nothing goes upstream), but each one is
//! put on the audit trail by the chain's audit filter with `auth: "session"` ([`audit`]).
//!
//! ```text
//! GET  /console/                    → Settings › API when signed in, else the sign-in page
//! GET  /console/login               sign-in: paste a key, or "Sign in with <provider>"
//! GET  /console/login/provider      provider sign-in: on to the provider (`oidc`)
//! GET  /console/callback            provider sign-in: back from the provider (`oidc`)
//! POST /console/login               key sign-in                       (Origin checked)
//! POST /console/logout              ends the session everywhere       (CSRF)
//! GET  /console/api                 Settings › API: keys, "Create key"
//! POST /console/api/keys            create a key: shown once          (CSRF, keys:manage)
//! GET  /console/api/keys/{id}/revoke   confirmation
//! POST /console/api/keys/{id}/revoke   revoke                         (CSRF, keys:manage)
//! GET  /console/models              models with curl / SDK snippets
//! GET  /console/usage               requests, tokens and spend per day, 30 days (the store)
//! GET  /console/admin               users, every key, upstreams       (console:admin)
//! GET  /console/admin/audit?user=   a user's recent audit records     (console:admin)
//! GET  /console/admin/keys/{id}/revoke  confirmation                  (console:admin)
//! POST /console/admin/keys/{id}/revoke                                (CSRF, console:admin)
//! GET  /console/admin/users/{disable|enable}?user=  confirmation     (console:admin)
//! POST /console/admin/users/{disable|enable}  user=NAME              (CSRF, console:admin)
//! GET  /console/assets/*            the embedded stylesheet and script
//! ```
//!
//! Key changes go through the key API's own code (`crate::keys`): the same rules, the same
//! audit records, plus the console's record of the action.

mod actions;
mod assets;
mod audit;
mod auditlog;
pub mod config;
mod daily;
mod oidc;
mod pages;
mod session;
mod signin;
mod users;
mod who;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};
use sluice_filters::{Identity, Outcome, Permission};

pub use config::ConsoleConfig;

use crate::state::{EngineState, Snapshot};
use session::Session;

/// The largest request body a console route reads (its forms are small).
pub const MAX_BODY: usize = 64 * 1024;

/// The security headers of every console response (SPEC §14).
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// The answer to a console request whose body could not be read whole (413 over
/// [`MAX_BODY`], 400 bad framing, 408 too slow): a short text, with the security headers.
pub fn unread_body(status: u16) -> Page {
    let text = match status {
        413 => "The form is larger than the console accepts.\n",
        408 => "The form did not arrive in time.\n",
        _ => "The request's body could not be read.\n",
    };
    Page {
        status,
        headers: vec![("content-type", "text/plain; charset=utf-8".into())],
        body: Bytes::from_static(text.as_bytes()),
    }
}

/// Whether a (normalized) path is the console's.
pub fn claims(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// A console request, as the adapter read it (the body whole, at most [`MAX_BODY`]).
pub struct ConsoleRequest<'a> {
    pub method: &'a Method,
    /// The normalized path (see [`crate::routes::normalize`]).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub client_ip: Option<IpAddr>,
}

/// A console response: status, headers and body, ready to write.
pub struct Page {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Page {
    fn html(status: u16, markup: maud::Markup) -> Page {
        Page {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".into()),
                ("cache-control", "no-store".into()),
            ],
            body: Bytes::from(markup.into_string()),
        }
    }

    fn redirect(to: &str) -> Page {
        Page {
            status: 303,
            headers: vec![
                ("location", to.to_string()),
                ("cache-control", "no-store".into()),
            ],
            body: Bytes::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: String) -> Page {
        self.headers.push((name, value));
        self
    }

    /// Every header the response carries: its own, then the security headers.
    pub fn all_headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain(SECURITY_HEADERS)
    }

    /// The response's request id header.
    fn with_request_id(self, id: &str) -> Page {
        self.with_header("x-request-id", id.to_string())
    }
}

/// One console request's context.
pub(crate) struct Ctx<'a> {
    pub state: &'a EngineState,
    pub snap: Arc<Snapshot>,
    pub req: &'a ConsoleRequest<'a>,
    /// A fresh id for this request's audit records (a client's `x-request-id` is not taken).
    pub request_id: String,
}

impl Ctx<'_> {
    fn config(&self) -> &ConsoleConfig {
        &self.snap.config.console
    }

    /// The gateway's base URL as the browser reaches it (`public_url`, else `Host`).
    pub fn base_url(&self) -> String {
        if let Some(o) = self.config().origin() {
            return o;
        }
        let host = self
            .req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            })
            .unwrap_or(&self.snap.config.server.listen);
        format!("http://{host}")
    }

    fn query_param(&self, name: &str) -> Option<String> {
        let q = self.req.query?;
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Answers a console request.
pub async fn handle(state: &Arc<EngineState>, req: &ConsoleRequest<'_>) -> Page {
    let cx = Ctx {
        state,
        snap: state.snapshot.load_full(),
        req,
        request_id: crate::request_id::new(),
    };
    answer(&cx).await.with_request_id(&cx.request_id)
}

async fn answer(cx: &Ctx<'_>) -> Page {
    let req = cx.req;
    let (m, path) = (req.method, req.path);
    if let Some(name) = path.strip_prefix("/console/assets/") {
        return assets::serve(m, name);
    }
    match (m, path) {
        (&Method::GET | &Method::HEAD, "/console") => return Page::redirect("/console/"),
        (&Method::GET | &Method::HEAD, "/console/login") => return signin::page(cx).await,
        (&Method::POST, "/console/login") => return signin::with_key(cx).await,
        (&Method::GET, "/console/login/provider" | "/console/callback") => {
            return signin::provider(cx).await
        }
        _ => {}
    }
    let session = match session::load(cx).await {
        Ok(Some(s)) => s,
        Ok(None) => return signed_out(cx).await,
        Err(page) => return page,
    };
    if m == Method::POST {
        if let Err(why) = session::check_csrf(cx, &session) {
            return refuse(cx, Some(&session), 403, Outcome::DeniedPermission, why).await;
        }
    }
    route(cx, &session).await
}

/// The routes that need a session.
async fn route(cx: &Ctx<'_>, s: &Session) -> Page {
    let path = cx.req.path;
    let (m, segs): (&Method, Vec<&str>) = (cx.req.method, path.split('/').skip(2).collect());
    let page = match (m, segs.as_slice()) {
        (&Method::GET, [""]) => Page::redirect("/console/api"),
        (&Method::POST, ["logout"]) => return signin::sign_out(cx, s).await,
        (&Method::GET, ["api"]) => actions::keys_page(cx, s, None).await,
        (&Method::POST, ["api", "keys"]) => return actions::create_key(cx, s).await,
        (&Method::GET, ["api", "keys", id, "revoke"]) => {
            let action = format!("/console/api/keys/{id}/revoke");
            Page::html(
                200,
                pages::keys::confirm(cx, s, id, &action, "/console/api"),
            )
        }
        (&Method::POST, ["api", "keys", id, "revoke"]) => {
            return actions::revoke_key(cx, s, id).await
        }
        (&Method::GET, ["models"]) => pages::models::page(cx, s),
        (&Method::GET, ["usage"]) => pages::usage::page(cx, s).await,
        (_, ["admin", ..]) if !is_admin(&s.identity) => {
            let why = "Admin pages need the role permission console:admin.";
            return refuse(cx, Some(s), 403, Outcome::DeniedPermission, why).await;
        }
        (&Method::GET, ["admin"]) => actions::admin_page(cx, s, None).await,
        (&Method::GET, ["admin", "audit"]) => actions::audit_page(cx, s).await,
        (&Method::GET, ["admin", "keys", id, "revoke"]) => {
            let action = format!("/console/admin/keys/{id}/revoke");
            Page::html(
                200,
                pages::keys::confirm(cx, s, id, &action, "/console/admin"),
            )
        }
        (&Method::POST, ["admin", "keys", id, "revoke"]) => {
            return actions::admin_revoke(cx, s, id).await
        }
        (&Method::GET, ["admin", "users", action]) => users::confirm(cx, s, action),
        (&Method::POST, ["admin", "users", action]) => return users::change(cx, s, action).await,
        _ => Page::html(
            404,
            pages::message(cx, Some(s), "Not found", "No console page here."),
        ),
    };
    let outcome = match http::StatusCode::from_u16(page.status) {
        Ok(st) if st.is_client_error() || st.is_server_error() => Outcome::for_error(st, ""),
        _ => Outcome::Ok,
    };
    audit::record(cx, Some(s), None, page.status, outcome).await;
    page
}

/// A request that needs a session and has none (or one that ended).
async fn signed_out(cx: &Ctx<'_>) -> Page {
    if cx.req.method == Method::GET || cx.req.method == Method::HEAD {
        return Page::redirect("/console/login");
    }
    let why = "You are not signed in (or your session ended): sign in again.";
    refuse(cx, None, 403, Outcome::DeniedAuth, why).await
}

/// A refused request: audited, answered with a page saying why.
async fn refuse(
    cx: &Ctx<'_>,
    s: Option<&Session>,
    status: u16,
    outcome: Outcome,
    why: &str,
) -> Page {
    audit::record(cx, s, None, status, outcome).await;
    Page::html(status, pages::message(cx, s, "Not allowed", why))
}

pub(crate) fn is_admin(identity: &Identity) -> bool {
    identity.grants.has(Permission::ConsoleAdmin)
}
