//! The console's pages: `maud` templates, compiled into the binary. Every value is escaped
//! by construction (a key name is text, never markup); no inline script or style.
//!
//! Each page is usable with a keyboard alone: a skip link, real links for navigation, real
//! buttons in real forms for every action, a label for every field, a visible focus ring.

pub mod admin;
pub mod keys;
pub mod models;
pub mod signin;
pub mod usage;

use maud::{html, Markup, DOCTYPE};

use super::session::Session;
use super::{is_admin, Ctx};

/// The console's sections, for the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Api,
    Models,
    Usage,
    Admin,
    None,
}

/// The page frame: head, navigation (when signed in), then `content`.
pub fn layout(title: &str, s: Option<&Session>, at: Section, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Sluice console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console/" { "Sluice" }
                    @if let Some(s) = s {
                        (nav(s, at))
                        div.who {
                            span { "Signed in as " strong { (s.identity.user) } }
                            form method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(s.row.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" { (content) }
            }
        }
    }
}

fn nav(s: &Session, at: Section) -> Markup {
    let item = |href: &str, label: &str, this: Section| {
        html! {
            li { a href=(href) aria-current=[(at == this).then_some("page")] { (label) } }
        }
    };
    html! {
        nav aria-label="Console" {
            ul {
                (item("/console/api", "Settings › API", Section::Api))
                (item("/console/models", "Models", Section::Models))
                (item("/console/usage", "Usage", Section::Usage))
                @if is_admin(&s.identity) {
                    (item("/console/admin", "Admin", Section::Admin))
                }
            }
        }
    }
}

/// A page that only says something (errors, refusals).
pub fn message(_cx: &Ctx<'_>, s: Option<&Session>, title: &str, text: &str) -> Markup {
    layout(
        title,
        s,
        Section::None,
        html! {
            h1 { (title) }
            p { (text) }
            p { a href="/console/" { "Back to the console" } }
        },
    )
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`; `—` when absent.
pub fn when(secs: Option<i64>) -> String {
    let Some(t) = secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok()) else {
        return "—".into();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}
