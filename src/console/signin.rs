//! Sign-in and sign-out.
//!
//! **Key sign-in** (the quick start, and `console.key_sign_in = true`): the pasted key is
//! authenticated by the chain's own header phase — the auth filter, exactly as if the key came
//! as `Authorization: Bearer` on the API (same lookup by digest, same refusal of disabled and
//! expired keys, same failure counter) — and the session then acts as that key's identity,
//! never more. The key itself is hashed and dropped; the session keeps the key's id.
//!
//! **Provider sign-in** (OpenID Connect, authorization code + PKCE S256, `state`, `nonce`)
//! needs `[identity]` (discovery, JWKS, ID token verification, the users directory), which is
//! built apart from the console; the flow is [`super::oidc`]. Without `[identity]`,
//! `GET /console/login/provider` and `GET /console/callback` answer 404.

use http::{HeaderMap, HeaderValue, Method};
use sluice_filters::{Cx, Outcome, RequestHead, Verdict};

use super::session::{self, Session};
use super::{actions, audit, pages, Ctx, Page};

/// `GET /console/login`: the sign-in page (or on to the console when already signed in).
pub async fn page(cx: &Ctx<'_>) -> Page {
    if let Ok(Some(_)) = session::load(cx).await {
        return Page::redirect("/console/api");
    }
    Page::html(200, pages::signin::page(cx, None))
}

/// `POST /console/login` with a `key` form field.
pub async fn with_key(cx: &Ctx<'_>) -> Page {
    if let Err(why) = session::check_origin(cx) {
        audit::record_as(cx, None, None, 403, Outcome::DeniedPermission).await;
        return Page::html(403, pages::signin::page(cx, Some(why)));
    }
    if !cx.config().key_sign_in {
        audit::record_as(cx, None, None, 403, Outcome::DeniedPermission).await;
        let why = "Sign-in with a key is turned off here (console.key_sign_in).";
        return Page::html(403, pages::signin::page(cx, Some(why)));
    }
    let key = actions::form_field(&cx.req.body, "key").unwrap_or_default();
    let identity = match authenticate(cx, key.trim()).await {
        Ok(i) => i,
        Err(why) => {
            audit::record_as(cx, None, None, 401, Outcome::DeniedAuth).await;
            return Page::html(401, pages::signin::page(cx, Some(why)));
        }
    };
    let Some(identity) = super::who::identity_of_key(cx.state, &cx.snap, &identity.key_id) else {
        audit::record_as(cx, Some(&identity), None, 401, Outcome::DeniedAuth).await;
        let why = "This key's user is not one the console knows.";
        return Page::html(401, pages::signin::page(cx, Some(why)));
    };
    session::end_presented(cx).await;
    match session::open(cx, &identity, "key").await {
        Ok(id) => {
            audit::record_as(cx, Some(&identity), None, 303, Outcome::Ok).await;
            Page::redirect("/console/api").with_header("set-cookie", session::set_cookie(cx, &id))
        }
        Err(e) => session::unavailable(cx, &e),
    }
}

/// The key's identity, through the chain's header phase (the auth filter).
async fn authenticate(cx: &Ctx<'_>, key: &str) -> Result<sluice_filters::Identity, &'static str> {
    const INVALID: &str = "That key is not valid: it is unknown, revoked, disabled or expired. \
                           Paste the whole key (it starts with sk-sluice-).";
    if key.is_empty() {
        return Err("Paste your Sluice API key to sign in.");
    }
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {key}")) else {
        return Err(INVALID);
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, bearer);
    let head = RequestHead {
        method: &Method::POST,
        path: cx.req.path,
        headers: &headers,
    };
    let mut acx = Cx::new(cx.request_id.clone(), Method::POST, cx.req.path.to_string());
    match cx.snap.chain.on_request_head(&head, &mut acx).await {
        Verdict::Continue => acx.identity.ok_or(
            "This gateway authenticates no one (its filter chain has no auth filter): \
             the console needs one.",
        ),
        Verdict::Respond(r) if r.status.as_u16() == 401 => Err(INVALID),
        Verdict::Respond(_) => Err("The gateway cannot sign you in right now; try again shortly."),
    }
}

/// `GET /console/login/provider` and `GET /console/callback` (see [`super::oidc`]); 404
/// without `[identity]`.
pub async fn provider(cx: &Ctx<'_>) -> Page {
    let Some(svc) = super::oidc::service(cx) else {
        return Page::html(
            404,
            pages::message(
                cx,
                None,
                "No identity provider",
                "This gateway has no [identity] provider configured: sign in with a key.",
            ),
        );
    };
    if cx.req.path == "/console/callback" {
        super::oidc::callback(cx, &svc).await
    } else {
        super::oidc::start(cx, &svc).await
    }
}

/// `POST /console/logout`: the session's row is deleted, so it ends on every instance.
pub async fn sign_out(cx: &Ctx<'_>, s: &Session) -> Page {
    let store = cx.state.store.store();
    if let Err(e) = store.end_session(&s.row.id_sha256).await {
        return session::unavailable(cx, &e);
    }
    audit::record(cx, Some(s), None, 303, Outcome::Ok).await;
    Page::redirect("/console/login").with_header("set-cookie", session::clear_cookie(cx))
}
