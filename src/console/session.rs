//! Sessions: the cookie, the row in the store, timeouts, and the checks every state-changing
//! request passes (CSRF token, `Origin`, `Sec-Fetch-Site`).
//!
//! The cookie holds 256 random bits; the store holds their SHA-256 (`SessionRow::id_sha256`).
//! Each request reads the row, so "Sign out" (the row deleted) ends the session on every
//! instance sharing the store, and the session's identity is resolved again from the key it
//! was opened with ([`super::who`]): a key revoked, disabled or narrowed since narrows or ends
//! the session too.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use sluice_filters::Identity;
use subtle::ConstantTimeEq;

use super::{pages, Ctx, Page};
use crate::store::{now_secs, SessionRow};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "sluice_session";
/// Its name when browsers reach the console over TLS (`__Host-`: `Secure`, no `Domain`,
/// `Path=/`, so no other host or path can set or shadow it).
pub const SECURE_COOKIE: &str = "__Host-sluice_session";

/// A live session: its row and the identity it acts as.
pub struct Session {
    pub row: SessionRow,
    pub identity: Identity,
}

/// 256 random bits, URL-safe base64.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

pub fn id_sha256(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn cookie_name(cx: &Ctx<'_>) -> &'static str {
    if cx.config().secure() {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// The `Set-Cookie` value that opens a session.
pub fn set_cookie(cx: &Ctx<'_>, id: &str) -> String {
    let max_age = cx.config().max_hours * 3600;
    if cx.config().secure() {
        // `__Host-` requires `Path=/` (browsers refuse it otherwise): the closest to
        // SPEC §14's `Path=/console` that a browser accepts over TLS.
        format!("{SECURE_COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax; Secure")
    } else {
        format!("{COOKIE}={id}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Lax")
    }
}

/// The `Set-Cookie` value that drops the cookie.
pub fn clear_cookie(cx: &Ctx<'_>) -> String {
    if cx.config().secure() {
        format!("{SECURE_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure")
    } else {
        format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Lax")
    }
}

/// The session cookie's value, if the request carries one.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The request's live session: `Ok(None)` without one (none, unknown, ended, timed out, or
/// its key no longer valid); `Err` with the page to answer when the store cannot be read.
pub async fn load(cx: &Ctx<'_>) -> Result<Option<Session>, Page> {
    let Some(id) = cookie_value(cx.req.headers, cookie_name(cx)) else {
        return Ok(None);
    };
    let hash = id_sha256(id);
    let store = cx.state.store.store();
    let row = match store.session(&hash).await {
        Ok(Some(row)) => row,
        Ok(None) => return Ok(None),
        Err(e) => return Err(unavailable(cx, &e)),
    };
    let now = now_secs();
    let idle = (cx.config().idle_minutes * 60) as i64;
    let identity = match row.key_id.as_deref() {
        Some(key_id) => super::who::identity_of_key(cx.state, &cx.snap, key_id),
        // A provider session: the user as the directory knows them now.
        None if row.auth == "oidc" => super::who::identity_of_user(cx.state, &cx.snap, &row.user),
        None => None,
    };
    let identity = match identity {
        Some(i)
            if now < row.expires && now - row.last_seen < idle && i.user.as_ref() == row.user =>
        {
            i
        }
        _ => {
            // Timed out, or its key is gone: the row goes too.
            if let Err(e) = store.end_session(&hash).await {
                tracing::warn!(error = %e, "console: an ended session could not be removed");
            }
            return Ok(None);
        }
    };
    if now - row.last_seen >= 5 {
        if let Err(e) = store.touch_session(&hash, now).await {
            return Err(unavailable(cx, &e));
        }
    }
    Ok(Some(Session { row, identity }))
}

pub fn unavailable(cx: &Ctx<'_>, e: &crate::store::StoreError) -> Page {
    tracing::warn!(error = %e, "console: the store is unavailable");
    Page::html(
        503,
        pages::message(
            cx,
            None,
            "Try again shortly",
            "The gateway's store cannot be reached, so sessions cannot be checked. API keys \
             already issued keep working.",
        ),
    )
    .with_header("retry-after", "1".into())
}

/// Refuses a request a browser sent on another site's behalf: `Sec-Fetch-Site: cross-site`, or
/// an `Origin` that is not the console's own (`Origin: null`, sent under `no-referrer`, and
/// requests without `Origin` are left to the CSRF token).
pub fn check_origin(cx: &Ctx<'_>) -> Result<(), &'static str> {
    let h = cx.req.headers;
    let site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Err("This request came from another site (Sec-Fetch-Site: cross-site).");
    }
    let Some(origin) = h.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if origin == "null" || origin.eq_ignore_ascii_case(&cx.base_url()) {
        return Ok(());
    }
    Err("This request came from another origin than the console's.")
}

/// The checks of every state-changing request of a session: origin, then the CSRF token (a
/// `csrf` form field or an `x-csrf-token` header), compared in constant time.
pub fn check_csrf(cx: &Ctx<'_>, s: &Session) -> Result<(), &'static str> {
    check_origin(cx)?;
    let sent = cx
        .req
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| super::actions::form_field(&cx.req.body, "csrf"));
    match sent {
        Some(t) if bool::from(t.as_bytes().ct_eq(s.row.csrf.as_bytes())) => Ok(()),
        Some(_) => Err("The form's CSRF token is wrong: reload the page and try again."),
        None => Err("The form carries no CSRF token: reload the page and try again."),
    }
}

/// Ends the session the request's cookie names, if any (a new sign-in replaces it).
pub async fn end_presented(cx: &Ctx<'_>) {
    if let Some(id) = cookie_value(cx.req.headers, cookie_name(cx)) {
        if let Err(e) = cx.state.store.store().end_session(&id_sha256(id)).await {
            tracing::warn!(error = %e, "console: a replaced session could not be removed");
        }
    }
}

/// Opens a session for `identity`, signed in with its key; returns the cookie's id.
pub async fn open(
    cx: &Ctx<'_>,
    identity: &Identity,
    auth: &str,
) -> Result<String, crate::store::StoreError> {
    let id = random_token();
    let now = now_secs();
    let row = SessionRow {
        id_sha256: id_sha256(&id),
        user: identity.user.to_string(),
        key_id: (auth == "key").then(|| identity.key_id.to_string()),
        auth: auth.to_string(),
        csrf: random_token(),
        created: now,
        last_seen: now,
        expires: now + (cx.config().max_hours * 3600) as i64,
    };
    cx.state.store.store().create_session(&row).await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; sluice_session=abc ; b=2".parse().unwrap());
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, SECURE_COOKIE), None);
        let mut h = HeaderMap::new();
        h.append("cookie", "x=1".parse().unwrap());
        h.append("cookie", "sluice_session=".parse().unwrap());
        assert_eq!(cookie_value(&h, COOKIE), None);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(id_sha256(&a).len(), 64);
        assert_ne!(id_sha256(&a), a);
    }
}
