//! Admin (role permission `console:admin`): users, every user's keys, upstream targets and
//! their state (what `GET /admin/upstreams` shows), and a user's recent audit records.

use maud::{html, Markup};
use serde_json::Value;
use sluice_filters::audit::AuditRecord;

use super::keys::{notice, KeyView, Notice};
use super::{layout, Section};
use crate::console::session::Session;
use crate::console::Ctx;

pub fn page(
    cx: &Ctx<'_>,
    s: &Session,
    keys: &[KeyView],
    upstreams: &Value,
    n: Option<Notice>,
) -> Markup {
    layout(
        "Admin",
        Some(s),
        Section::Admin,
        html! {
            h1 { "Admin" }
            (notice(&n))
            (users(cx))
            (all_keys(keys))
            (upstream_table(upstreams))
        },
    )
}

fn users(cx: &Ctx<'_>) -> Markup {
    let dir = crate::identity::admin::directory(cx.state, &cx.snap);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    html! {
        h2 id="users" { "Users" }
        p.hint {
            "Users of the config file and of the users directory (users signed in through the \
             identity provider). A disabled user's keys and console sessions stop working."
        }
        table id="users-table" {
            thead { tr { th { "Name" } th { "Org" } th { "Role" } th.num { "Keys" } th { "Source" } th { "State" } th { "Last seen" } th { span.hint { "Actions" } } } }
            tbody {
                @for (name, u) in &dir {
                    @let disabled = u["disabled"] == true;
                    tr data-user=(name) {
                        td { (name) }
                        td { (text(&u["org"])) }
                        td { (text(&u["role"])) }
                        td.num { (u["keys"].as_u64().unwrap_or(0)) }
                        td { span.badge { (text(&u["source"])) } }
                        td.state { @if disabled { span.badge.out { "disabled" } } @else { span.badge.in { "enabled" } } }
                        td { (u["last_seen"].as_str().unwrap_or("—")) }
                        td {
                            @let action = if disabled { "enable" } else { "disable" };
                            a.button.secondary href=(format!("/console/admin/users/{action}?user={}", enc(name)))
                                aria-label=(format!("{} {name}", if disabled { "Enable" } else { "Disable" })) {
                                @if disabled { "Enable" } @else { "Disable" }
                            }
                            " "
                            a href=(format!("/console/admin/audit?user={}", enc(name))) { "Recent records" }
                        }
                    }
                }
            }
        }
    }
}

/// The confirmation before disabling or enabling a user (`action` is `disable` or `enable`).
pub fn user_confirm(s: &Session, user: &str, action: &str) -> Markup {
    let disable = action == "disable";
    layout(
        if disable {
            "Disable user"
        } else {
            "Enable user"
        },
        Some(s),
        Section::Admin,
        html! {
            h1 { @if disable { "Disable " } @else { "Enable " } code { (user) } "?" }
            p {
                @if disable {
                    "Every request with this user's keys will be refused (401) and their console \
                     sessions end, until the user is enabled again."
                } @else {
                    "This user's keys and sign-ins work again."
                }
            }
            form method="post" action=(format!("/console/admin/users/{action}")) class="actions" {
                input type="hidden" name="csrf" value=(s.row.csrf);
                input type="hidden" name="user" value=(user);
                button.danger type="submit" id="confirm-user" { @if disable { "Disable user" } @else { "Enable user" } }
                a.button.secondary href="/console/admin#users" { "Cancel" }
            }
        },
    )
}

fn all_keys(keys: &[KeyView]) -> Markup {
    html! {
        h2 id="keys" { "Every user's keys" }
        table id="all-keys" {
            thead { tr { th { "ID" } th { "User" } th { "Name" } th { "Models" } th { "Created" } th { "Expires" } th { "Last used" } th { span.hint { "Actions" } } } }
            tbody {
                @for k in keys {
                    tr data-key-id=(k.id) {
                        td { code { (k.id) } }
                        td { (k.user) }
                        td { (k.name) }
                        td { (k.models) }
                        td { (k.created) }
                        td { (k.expires) }
                        td { (k.last_used) }
                        td {
                            @if k.from_config { span.badge { "config · read-only" } }
                            @else {
                                a.button.secondary href=(format!("/console/admin/keys/{}/revoke", k.id))
                                    aria-label=(format!("Revoke {}", k.id)) { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn upstream_table(v: &Value) -> Markup {
    let empty = Vec::new();
    let ups = v["data"].as_array().unwrap_or(&empty);
    let text = |x: &Value| match x {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    html! {
        h2 id="upstreams" { "Upstream targets" }
        table id="upstreams-table" {
            thead { tr { th { "Upstream" } th { "State" } th { "Out until" } th { "Why" } th.num { "Failures in a row" } th.num { "In flight" } th { "Models" } } }
            tbody {
                @for u in ups {
                    tr {
                        td { code { (text(&u["name"])) } }
                        td {
                            @if u["in_service"] == true { span.badge.in { "in service" } }
                            @else { span.badge.out { (text(&u["state"])) } }
                        }
                        td { (text(&u["out_until"])) }
                        td { (text(&u["why"])) }
                        td.num { (text(&u["consecutive_failures"])) }
                        td.num { (text(&u["in_flight"])) }
                        td { (u["models"].as_array().map(|m| m.iter().map(&text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// A user's recent audit records: the fields of SPEC §6 (records hold no bodies).
pub fn audit(
    cx: &Ctx<'_>,
    s: &Session,
    user: &str,
    records: &Result<Vec<AuditRecord>, String>,
) -> Markup {
    layout(
        "Audit records",
        Some(s),
        Section::Admin,
        html! {
            h1 { "Recent audit records" }
            form method="get" action="/console/admin/audit" class="actions" {
                label for="user" { "User" }
                select id="user" name="user" {
                    @for u in &cx.snap.config.users {
                        option value=(u.name) selected[u.name == user] { (u.name) }
                    }
                }
                button type="submit" { "Show" }
            }
            @match records {
                Err(e) => p.notice.warn { (e) },
                Ok(r) if r.is_empty() => p { "No records of this user in the recent audit log." },
                Ok(r) => (records_table(r)),
            }
        },
    )
}

fn records_table(records: &[AuditRecord]) -> Markup {
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "—".into());
    html! {
        table id="audit" {
            thead { tr { th { "Time" } th { "Method" } th { "Path" } th { "Status" } th { "Outcome" } th { "Auth" } th { "Key" } th { "Model" } th.num { "Tokens" } th { "DLP" } th { "Client" } } }
            tbody {
                @for r in records {
                    tr {
                        td { (r.ts) }
                        td { (r.method) }
                        td { code { (r.path) } }
                        td { (r.status.map(|s| s.to_string()).unwrap_or_else(|| "—".into())) }
                        td { (r.outcome) }
                        td { (r.auth.clone().unwrap_or_else(|| "key".into())) }
                        td { (opt(&r.key_id)) }
                        td { (opt(&r.model)) }
                        td.num { (r.usage.map(|u| (u.prompt_tokens + u.completion_tokens).to_string()).unwrap_or_else(|| "—".into())) }
                        td { (r.dlp.iter().map(|d| format!("{} {} ×{}", d.detector, d.action, d.count)).collect::<Vec<_>>().join(", ")) }
                        td { (opt(&r.client_ip)) }
                    }
                }
            }
        }
    }
}

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_string())
        .unwrap_or_default()
}
