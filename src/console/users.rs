//! The admin page's Disable/Enable of a user: the same code as `PUT /admin/v1/users/{name}`
//! ([`crate::identity::admin::set_disabled`]: store, table, audit record), plus the console's
//! own record of the action (`auth: "session"`).

use sluice_filters::Outcome;

use super::actions::{admin_page, form_field};
use super::pages::keys::Notice;
use super::session::Session;
use super::{audit, pages, Ctx, Page};
use crate::keys::admin::AdminRequest;

/// `disable` or `enable`, as the route names it.
fn disables(action: &str) -> Option<bool> {
    match action {
        "disable" => Some(true),
        "enable" => Some(false),
        _ => None,
    }
}

/// `GET /console/admin/users/{disable|enable}?user=NAME`: the confirmation.
pub fn confirm(cx: &Ctx<'_>, s: &Session, action: &str) -> Page {
    let user = cx.query_param("user").unwrap_or_default();
    match disables(action) {
        Some(_) if !user.is_empty() => {
            Page::html(200, pages::admin::user_confirm(s, &user, action))
        }
        _ => Page::html(
            404,
            pages::message(cx, Some(s), "Not found", "No such user action."),
        ),
    }
}

/// `POST /console/admin/users/{disable|enable}` with the form field `user`.
pub async fn change(cx: &Ctx<'_>, s: &Session, action: &str) -> Page {
    let user = form_field(&cx.req.body, "user").unwrap_or_default();
    let Some(disabled) = disables(action).filter(|_| !user.is_empty()) else {
        audit::record(cx, Some(s), None, 400, Outcome::BadRequest).await;
        let n = Notice::Failed(400, "Name the user to disable or enable.".into());
        return admin_page(cx, s, Some(n)).await;
    };
    let req = AdminRequest {
        method: cx.req.method,
        path: cx.req.path,
        query: None,
        headers: cx.req.headers,
        body: &[],
        client_ip: cx.req.client_ip,
        request_id: &cx.request_id,
    };
    let r = crate::identity::admin::set_disabled(cx.state, &cx.snap, &req, &user, disabled).await;
    let status = r.status.as_u16();
    audit::record(cx, Some(s), None, status, r.outcome).await;
    if status != 200 {
        let why = r
            .error_info
            .as_ref()
            .map_or_else(|| "The change was refused.".into(), |e| e.message.clone());
        return admin_page(cx, s, Some(Notice::Failed(status, why))).await;
    }
    let done = if disabled { "disabled" } else { "enabled" };
    Page::redirect(&format!(
        "/console/admin?user={}&done={done}#users",
        super::actions::urlencode(&user)
    ))
}
