//! Settings › API: the user's keys, "Create key", the key shown once, "Revoke".

use maud::{html, Markup};
use serde_json::Value;

use super::{layout, when, Section};
use crate::console::session::Session;
use crate::console::Ctx;

/// What happened, shown above the page.
pub enum Notice {
    Done(String),
    /// The status to answer with, and why.
    Failed(u16, String),
}

/// One key as the pages show it.
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub user: String,
    pub models: String,
    pub created: String,
    pub expires: String,
    pub last_used: String,
    pub from_config: bool,
    pub disabled: bool,
}

impl KeyView {
    /// The keys of a key API list (`{"data": [...]}`).
    pub fn list(v: &Value) -> Vec<KeyView> {
        let Some(data) = v["data"].as_array() else {
            return Vec::new();
        };
        data.iter().map(KeyView::of).collect()
    }

    fn of(k: &Value) -> KeyView {
        let s = |f: &str| k[f].as_str().unwrap_or_default().to_string();
        let models = match k["models"].as_array() {
            Some(m) => m
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            None => "all of the user's".into(),
        };
        KeyView {
            id: s("id"),
            name: s("name"),
            user: s("user"),
            models,
            created: when(k["created"].as_i64()),
            expires: match k["expires"].as_i64() {
                Some(e) => when(Some(e)),
                None => "never".into(),
            },
            last_used: match k["last_used"].as_i64() {
                Some(u) => when(Some(u)),
                None => "never".into(),
            },
            from_config: k["source"] == "config",
            disabled: k["disabled"] == true,
        }
    }
}

pub fn notice(n: &Option<Notice>) -> Markup {
    html! {
        @match n {
            Some(Notice::Done(m)) => p.notice.ok role="status" { (m) },
            Some(Notice::Failed(_, m)) => p.notice.error role="alert" { (m) },
            None => {},
        }
    }
}

/// The keys table and the "Create key" form.
pub fn page(cx: &Ctx<'_>, s: &Session, keys: &[KeyView], n: Option<Notice>) -> Markup {
    let manage = s
        .identity
        .grants
        .has(sluice_filters::Permission::KeysManage);
    layout(
        "Settings › API",
        Some(s),
        Section::Api,
        html! {
            h1 { "Settings › API" }
            p.lead { "API keys of " strong { (s.identity.user) } " for this gateway: " code { (cx.base_url()) "/v1" } }
            (notice(&n))
            @if !manage {
                p.notice.warn { "Your role does not include the permission keys:manage, so you cannot list, create or revoke keys here." }
            } @else {
                h2 { "Your keys" }
                (table(keys))
                (create_form(cx, s))
            }
        },
    )
}

fn table(keys: &[KeyView]) -> Markup {
    html! {
        table id="keys" {
            caption.hint { "Keys from the gateway's config file are read-only here." }
            thead { tr { th { "ID" } th { "Name" } th { "Models" } th { "Created" } th { "Expires" } th { "Last used" } th { span.hint { "Actions" } } } }
            tbody {
                @for k in keys {
                    tr data-key-id=(k.id) {
                        td { code { (k.id) } }
                        td.name { (k.name) }
                        td { (k.models) }
                        td { (k.created) }
                        td { (k.expires) }
                        td { (k.last_used) }
                        td {
                            @if k.from_config {
                                span.badge { "config · read-only" }
                            } @else if k.disabled {
                                span.badge { "disabled" }
                            } @else {
                                a.button.secondary href=(format!("/console/api/keys/{}/revoke", k.id))
                                    aria-label=(format!("Revoke {}", k.id)) { "Revoke" }
                            }
                        }
                    }
                }
                @if keys.is_empty() { tr { td colspan="7" { "No keys yet." } } }
            }
        }
    }
}

fn create_form(cx: &Ctx<'_>, s: &Session) -> Markup {
    let models: Vec<String> = cx
        .snap
        .config
        .models
        .iter()
        .filter(|m| s.identity.grants.may_use_model(&m.name))
        .map(|m| m.name.clone())
        .collect();
    html! {
        section.card aria-labelledby="create-title" {
            h2 id="create-title" { "Create key" }
            form method="post" action="/console/api/keys" {
                input type="hidden" name="csrf" value=(s.row.csrf);
                label for="name" { "Name" }
                input type="text" id="name" name="name" maxlength="128" placeholder="laptop";
                fieldset {
                    legend { "Models" }
                    p.hint { "Leave all unchecked for every model you may use; check some to narrow the key." }
                    @for (i, m) in models.iter().enumerate() {
                        label for=(format!("model-{i}")) {
                            input type="checkbox" id=(format!("model-{i}")) name="models" value=(m);
                            (m)
                        }
                    }
                }
                label for="expires" { "Expires" }
                select id="expires" name="expires_in_days" {
                    option value="" { "Never (or with the key you signed in with)" }
                    option value="7" { "In 7 days" }
                    option value="30" selected { "In 30 days" }
                    option value="90" { "In 90 days" }
                    option value="365" { "In a year" }
                }
                p { button type="submit" id="create-key" { "Create key" } }
            }
        }
    }
}

/// The new key, shown once.
pub fn created(cx: &Ctx<'_>, s: &Session, made: &Value) -> Markup {
    let key = made["key"].as_str().unwrap_or_default();
    let id = made["id"].as_str().unwrap_or_default();
    layout(
        "Key created",
        Some(s),
        Section::Api,
        html! {
            h1 { "Key created" }
            p.notice.warn role="alert" {
                strong { "Copy this key now: it will not be shown again." }
                " Sluice keeps only its SHA-256."
            }
            p { "Key " code { (id) } @if let Some(n) = made["name"].as_str().filter(|n| !n.is_empty()) { " (" (n) ")" } ":" }
            code.secret id="new-key" { (key) }
            p.actions {
                button type="button" data-copy="new-key" data-status="copy-status" hidden { "Copy" }
                span id="copy-status" role="status" {}
            }
            h2 { "Try it" }
            pre { code { "curl " (cx.base_url()) "/v1/models -H \"Authorization: Bearer $SLUICE_API_KEY\"" } }
            p { a.button href="/console/api" { "Done: back to API keys" } }
        },
    )
}

/// "Revoke key X?" with the button that does it.
pub fn confirm(_cx: &Ctx<'_>, s: &Session, id: &str, action: &str, back: &str) -> Markup {
    layout(
        "Revoke key",
        Some(s),
        Section::Api,
        html! {
            h1 { "Revoke key " code { (id) } "?" }
            p { "Every request with this key will be refused from now on (401). This cannot be undone." }
            form method="post" action=(action) class="actions" {
                input type="hidden" name="csrf" value=(s.row.csrf);
                button.danger type="submit" id="confirm-revoke" { "Revoke key" }
                a.button.secondary href=(back) { "Cancel" }
            }
        },
    )
}
