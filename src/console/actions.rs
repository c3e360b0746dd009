//! The console's actions on keys, and the data of its admin pages. Keys are listed, made and
//! revoked by the key API's own code (`crate::keys`), acting as the session's identity: the
//! same rules (a key made may only narrow the session's key), the same audit records, plus the
//! console's own record of the action.

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use sluice_filters::{Cx, JsonBody, Outcome, Permission, Reply};

use super::pages::keys::{KeyView, Notice};
use super::session::Session;
use super::{audit, auditlog, pages, refuse, Ctx, Page};
use crate::keys;

/// The fields of an `application/x-www-form-urlencoded` body (repeated names kept).
pub fn form(body: &Bytes) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// The first value of a form field.
pub fn form_field(body: &Bytes, name: &str) -> Option<String> {
    form(body)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The request as the key API sees it: the session's identity, the console's path.
fn api_cx(cx: &Ctx<'_>, s: &Session) -> Cx {
    let mut acx = Cx::new(
        cx.request_id.clone(),
        cx.req.method.clone(),
        cx.req.path.chars().take(256).collect(),
    );
    acx.identity = Some(s.identity.clone());
    acx.client_ip = cx.req.client_ip;
    acx.auth = Some("session");
    acx
}

async fn key_api(cx: &Ctx<'_>, s: &Session, m: Method, id: Option<&str>, body: Value) -> Reply {
    let acx = api_cx(cx, s);
    let raw = Bytes::from(body.to_string());
    let body = JsonBody::parsed(raw, body);
    keys::self_service(cx.state, &cx.snap, &acx, &m, id, &body).await
}

fn reply_json(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

fn reply_message(r: &Reply) -> String {
    match &r.error_info {
        Some(e) => e.message.clone(),
        None => "The change was refused.".into(),
    }
}

fn may_manage(s: &Session) -> bool {
    s.identity.grants.has(Permission::KeysManage)
}

/// Settings › API.
pub async fn keys_page(cx: &Ctx<'_>, s: &Session, notice: Option<Notice>) -> Page {
    let notice = notice.or_else(|| {
        cx.query_param("revoked")
            .map(|id| Notice::Done(format!("The key {id} is revoked.")))
    });
    if !may_manage(s) {
        return Page::html(200, pages::keys::page(cx, s, &[], notice));
    }
    let list = key_api(cx, s, Method::GET, None, Value::Null).await;
    let views = KeyView::list(&reply_json(&list));
    let status = match &notice {
        Some(Notice::Failed(status, _)) => *status,
        _ => 200,
    };
    Page::html(status, pages::keys::page(cx, s, &views, notice))
}

/// `POST /console/api/keys`: name, models (checked boxes), expiry.
pub async fn create_key(cx: &Ctx<'_>, s: &Session) -> Page {
    if !may_manage(s) {
        let why = "Creating keys needs the role permission keys:manage.";
        return refuse(cx, Some(s), 403, Outcome::DeniedPermission, why).await;
    }
    let fields = form(&cx.req.body);
    let field = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.trim());
    let models: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| k == "models")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut body = json!({});
    if let Some(name) = field("name").filter(|n| !n.is_empty()) {
        body["name"] = json!(name);
    }
    if !models.is_empty() {
        body["models"] = json!(models);
    }
    if let Some(d) = field("expires_in_days").filter(|d| !d.is_empty()) {
        match d.parse::<u64>() {
            Ok(days) => body["expires_in_days"] = json!(days),
            Err(_) => {
                let n = Notice::Failed(400, "The expiry must be a number of days.".into());
                audit::record(cx, Some(s), None, 400, Outcome::BadRequest).await;
                return keys_page(cx, s, Some(n)).await;
            }
        }
    }
    let r = key_api(cx, s, Method::POST, None, body).await;
    let status = r.status.as_u16();
    if status != 201 {
        audit::record(cx, Some(s), None, status, r.outcome).await;
        return keys_page(cx, s, Some(Notice::Failed(status, reply_message(&r)))).await;
    }
    let made = reply_json(&r);
    let id = made["id"].as_str().unwrap_or_default();
    audit::record(cx, Some(s), Some(id), 200, Outcome::Ok).await;
    Page::html(200, pages::keys::created(cx, s, &made))
}

/// `POST /console/api/keys/{id}/revoke`.
pub async fn revoke_key(cx: &Ctx<'_>, s: &Session, id: &str) -> Page {
    if !may_manage(s) {
        let why = "Revoking keys needs the role permission keys:manage.";
        return refuse(cx, Some(s), 403, Outcome::DeniedPermission, why).await;
    }
    let r = key_api(cx, s, Method::DELETE, Some(id), Value::Null).await;
    let status = r.status.as_u16();
    audit::record(cx, Some(s), Some(id), status, r.outcome).await;
    if status != 200 {
        return keys_page(cx, s, Some(Notice::Failed(status, reply_message(&r)))).await;
    }
    Page::redirect(&format!("/console/api?revoked={}", urlencode(id)))
}

pub(crate) fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// The admin page: users, every key, upstreams.
pub async fn admin_page(cx: &Ctx<'_>, s: &Session, notice: Option<Notice>) -> Page {
    let notice = notice.or_else(|| {
        cx.query_param("revoked")
            .map(|id| Notice::Done(format!("The key {id} is revoked.")))
    });
    let notice = notice.or_else(|| {
        let user = cx.query_param("user")?;
        let done = cx
            .query_param("done")
            .filter(|d| d == "disabled" || d == "enabled")?;
        Some(Notice::Done(format!("The user {user} is {done}.")))
    });
    let keys = KeyView::list(&keys::list(cx.state, &cx.snap, None));
    let upstreams = crate::upstream::admin_view(&cx.snap);
    let status = match &notice {
        Some(Notice::Failed(status, _)) => *status,
        _ => 200,
    };
    Page::html(status, pages::admin::page(cx, s, &keys, &upstreams, notice))
}

/// `POST /console/admin/keys/{id}/revoke`: any user's store key.
pub async fn admin_revoke(cx: &Ctx<'_>, s: &Session, id: &str) -> Page {
    let ua = cx
        .req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let ev = keys::Event {
        request_id: &cx.request_id,
        method: cx.req.method,
        path: cx.req.path,
        client_ip: cx.req.client_ip,
        user_agent: ua,
    };
    let r = keys::revoke(cx.state, &cx.snap, &ev, id, None).await;
    let status = r.status.as_u16();
    audit::record(cx, Some(s), Some(id), status, r.outcome).await;
    if status != 200 {
        return admin_page(cx, s, Some(Notice::Failed(status, reply_message(&r)))).await;
    }
    Page::redirect(&format!("/console/admin?revoked={}", urlencode(id)))
}

/// `GET /console/admin/audit?user=NAME`: the user's most recent audit records.
pub async fn audit_page(cx: &Ctx<'_>, s: &Session) -> Page {
    let user = cx.query_param("user").unwrap_or_default();
    let records = if user.is_empty() {
        Ok(Vec::new())
    } else {
        auditlog::recent(&cx.snap.config.audit.path, &user, 100).await
    };
    Page::html(200, pages::admin::audit(cx, s, &user, &records))
}
