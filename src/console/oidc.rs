//! Provider sign-in (SPEC §14): OpenID Connect authorization code flow with PKCE (S256),
//! `state` and `nonce`.
//!
//! `GET /console/login/provider` draws a `state`, a `nonce` and a PKCE verifier (256 random
//! bits each), keeps them in this instance's memory (bounded, ten minutes) under the state's
//! SHA-256, sets a short-lived cookie `sluice_signin` holding the state (`HttpOnly`,
//! `Path=/console`, ten minutes) so the callback must come back to the browser that started,
//! and redirects to the provider's authorization endpoint. `GET /console/callback` takes the
//! pending sign-in out of memory (so a state works once), exchanges the code at the token
//! endpoint (client secret from `identity.client_secret_env`, the verifier), verifies the ID
//! token with its nonce, maps the user (`identity.roles`) and opens a session with
//! `auth = "oidc"`. The session then resolves through the users directory on each request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_filters::auth::{StoreUser, TokenRefusal, TokenUser};
use sluice_filters::Outcome;

use super::session::{self, id_sha256, random_token};
use super::{audit, pages, Ctx, Page};
use crate::identity::IdentityService;

/// How long a started sign-in may take.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// The most sign-ins this instance keeps waiting.
const MAX_PENDING: usize = 10_000;
/// The cookie binding a started sign-in to its browser.
const SIGNIN_COOKIE: &str = "sluice_signin";
/// The largest token endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 256 * 1024;
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
const PENDING_KEY: &str = "console:oidc-pending";

struct Pending {
    nonce: String,
    verifier: String,
    at: Instant,
}

/// Started sign-ins, by the SHA-256 of their state.
#[derive(Default)]
struct PendingSignins(Mutex<HashMap<String, Pending>>);

impl PendingSignins {
    fn put(&self, state: &str, p: Pending) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, v| v.at.elapsed() < PENDING_FOR);
        if map.len() >= MAX_PENDING {
            return false;
        }
        map.insert(id_sha256(state), p);
        true
    }

    fn take(&self, state: &str) -> Option<Pending> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&id_sha256(state))
            .filter(|p| p.at.elapsed() < PENDING_FOR)
    }
}

fn pending(cx: &Ctx<'_>) -> Arc<PendingSignins> {
    cx.state
        .shared
        .get_or_try_init(PENDING_KEY, || {
            Ok::<_, std::convert::Infallible>(PendingSignins::default())
        })
        .unwrap_or_else(|never| match never {})
}

/// The running identity service, when `[identity]` is configured.
pub fn service(cx: &Ctx<'_>) -> Option<Arc<IdentityService>> {
    cx.snap.config.identity.as_ref()?;
    crate::identity::service(&cx.state.shared)
}

/// The provider's name as the sign-in button shows it (the issuer's host).
pub(crate) fn provider_name(cx: &Ctx<'_>) -> Option<String> {
    let issuer = &cx.snap.config.identity.as_ref()?.issuer;
    let host = reqwest::Url::parse(issuer).ok()?.host_str()?.to_string();
    Some(host)
}

fn redirect_uri(cx: &Ctx<'_>) -> String {
    format!("{}/console/callback", cx.base_url())
}

/// `GET /console/login/provider`: on to the provider's authorization endpoint.
pub async fn start(cx: &Ctx<'_>, svc: &IdentityService) -> Page {
    let Some(endpoint) = svc
        .discovery()
        .and_then(|d| d.authorization_endpoint.clone())
    else {
        return fail(
            cx,
            401,
            "The identity provider cannot be reached right now; try again shortly.",
        )
        .await;
    };
    let Ok(mut url) = reqwest::Url::parse(&endpoint) else {
        return fail(
            cx,
            401,
            "The identity provider's authorization endpoint is not a valid URL.",
        )
        .await;
    };
    let (state, nonce, verifier) = (random_token(), random_token(), random_token());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let p = Pending {
        nonce: nonce.clone(),
        verifier,
        at: Instant::now(),
    };
    if !pending(cx).put(&state, p) {
        return fail(
            cx,
            401,
            "Too many sign-ins are under way; try again shortly.",
        )
        .await;
    }
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &svc.config().client_id)
        .append_pair("redirect_uri", &redirect_uri(cx))
        .append_pair("scope", "openid email profile")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let cookie = format!(
        "{SIGNIN_COOKIE}={state}; Path=/console; Max-Age={}; HttpOnly; SameSite=Lax{}",
        PENDING_FOR.as_secs(),
        if cx.config().secure() { "; Secure" } else { "" }
    );
    Page::redirect(url.as_str()).with_header("set-cookie", cookie)
}

/// `GET /console/callback?code&state`: the session, or the sign-in page with the reason.
pub async fn callback(cx: &Ctx<'_>, svc: &IdentityService) -> Page {
    match finish(cx, svc).await {
        Ok(page) => page,
        Err((status, why)) => fail(cx, status, &why).await,
    }
}

async fn finish(cx: &Ctx<'_>, svc: &IdentityService) -> Result<Page, (u16, String)> {
    let refused = |m: &str| (401, m.to_string());
    if let Some(e) = cx.query_param("error") {
        let e: String = e
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        return Err(refused(&format!(
            "The identity provider refused the sign-in ({e})."
        )));
    }
    let state = cx.query_param("state").unwrap_or_default();
    let code = cx.query_param("code").unwrap_or_default();
    if state.is_empty() || code.is_empty() {
        return Err(refused(
            "The provider's answer has no code or state: sign in again.",
        ));
    }
    let bound = session::cookie_value(cx.req.headers, SIGNIN_COOKIE);
    let p = pending(cx).take(&state);
    let p = match (p, bound) {
        (Some(p), Some(b)) if b == state => p,
        _ => {
            return Err(refused(
                "This sign-in is unknown, already used, expired or was started in another \
                 browser: sign in again.",
            ))
        }
    };
    let id_token = exchange(cx, svc, &code, &p.verifier)
        .await
        .map_err(|m| refused(&m))?;
    let claims = svc
        .verify_id_token(&id_token, &p.nonce)
        .await
        .map_err(|e| {
            refused(&format!(
                "The provider's ID token was refused: {}",
                e.message()
            ))
        })?;
    let user = svc.sign_in(&claims).map_err(|r| match r {
        TokenRefusal::NoRole(m) => (403, m),
        TokenRefusal::Invalid(m) => (401, m),
    })?;
    into_directory(cx, &user)?;
    let Some(identity) = super::who::identity_of_user(cx.state, &cx.snap, &user.name) else {
        return Err((
            403,
            "Your provider's groups map to a role this gateway does not have.".into(),
        ));
    };
    session::end_presented(cx).await;
    let id = session::open(cx, &identity, "oidc").await.map_err(|_| {
        (
            503,
            "The gateway's store cannot be reached; try again shortly.".to_string(),
        )
    })?;
    audit::record_as(cx, Some(&identity), None, 303, Outcome::Ok).await;
    Ok(Page::redirect("/console/api")
        .with_header("set-cookie", session::set_cookie(cx, &id))
        .with_header("set-cookie", clear_cookie(cx)))
}

/// The signed-in user in the users directory: refused while disabled; else known at once with
/// the org and role of this sign-in (the sighting's writer records it in the store behind us,
/// and the directory in memory knows it now, so the session resolves on the very next request).
fn into_directory(cx: &Ctx<'_>, user: &TokenUser) -> Result<(), (u16, String)> {
    let store = cx.state.store.clone();
    let known = store.users().table().get(&user.name).cloned();
    if known.as_ref().is_some_and(|u| u.disabled) {
        return Err((
            403,
            "Your user is disabled on this gateway; ask your administrator.".into(),
        ));
    }
    let same = known.as_ref().is_some_and(|u| {
        u.org.as_deref() == Some(&*user.org) && u.role.as_deref() == Some(&*user.role)
    });
    if !same {
        store.put_user(StoreUser {
            name: user.name.to_string(),
            source: known.as_ref().map_or("oidc".into(), |u| u.source.clone()),
            org: Some(user.org.to_string()),
            role: Some(user.role.to_string()),
            disabled: false,
            last_seen: Some(crate::store::now_secs().max(0) as u64),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// The code exchanged at the token endpoint: the ID token.
async fn exchange(
    cx: &Ctx<'_>,
    svc: &IdentityService,
    code: &str,
    verifier: &str,
) -> Result<String, String> {
    const UNREACHABLE: &str = "The identity provider's token endpoint cannot be reached.";
    let endpoint = svc
        .discovery()
        .and_then(|d| d.token_endpoint.clone())
        .ok_or(UNREACHABLE)?;
    let cfg = svc.config();
    let secret = cfg
        .client_secret_env
        .as_deref()
        .and_then(|v| std::env::var(v).ok());
    let redirect = redirect_uri(cx);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect.as_str()),
        ("client_id", cfg.client_id.as_str()),
        ("code_verifier", verifier),
    ];
    let http = reqwest::Client::builder()
        .timeout(TOKEN_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|_| UNREACHABLE)?;
    let mut req = http.post(&endpoint).form(&form);
    if let Some(s) = &secret {
        req = req.basic_auth(&cfg.client_id, Some(s));
    }
    let mut resp = req.send().await.map_err(|_| UNREACHABLE)?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| UNREACHABLE)? {
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err("The identity provider's token answer is too large.".into());
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        tracing::info!(
            status = status.as_u16(),
            "console: the provider refused the code exchange"
        );
        return Err(format!(
            "The identity provider refused to exchange the code (status {}): sign in again.",
            status.as_u16()
        ));
    }
    serde_json::from_slice::<TokenAnswer>(&body)
        .ok()
        .and_then(|a| a.id_token)
        .ok_or_else(|| "The identity provider's token answer has no ID token.".into())
}

fn clear_cookie(cx: &Ctx<'_>) -> String {
    format!(
        "{SIGNIN_COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Lax{}",
        if cx.config().secure() { "; Secure" } else { "" }
    )
}

/// A failed sign-in (401, or 403 for a user with no role): audited `denied_auth`, the
/// sign-in page again with the reason.
async fn fail(cx: &Ctx<'_>, status: u16, why: &str) -> Page {
    audit::record_as(cx, None, None, status, Outcome::DeniedAuth).await;
    Page::html(status, pages::signin::page(cx, Some(why)))
        .with_header("set-cookie", clear_cookie(cx))
}
