//! The sign-in page.

use maud::{html, Markup};

use super::{layout, Section};
use crate::console::Ctx;

/// The sign-in form; `error`: why the last attempt failed.
pub fn page(cx: &Ctx<'_>, error: Option<&str>) -> Markup {
    let provider = crate::console::oidc::provider_name(cx);
    let key_sign_in = cx.config().key_sign_in;
    layout(
        "Sign in",
        None,
        Section::None,
        html! {
            div.signin.card {
                h1 { "Sign in to Sluice" }
                @if let Some(e) = error {
                    p.notice.error role="alert" id="signin-error" { (e) }
                }
                @if let Some(name) = &provider {
                    p {
                        a.button href="/console/login/provider" id="signin-provider" {
                            "Sign in with " (name)
                        }
                    }
                }
                @if key_sign_in {
                    form method="post" action="/console/login" {
                        label for="key" { "Your Sluice API key" }
                        input type="password" id="key" name="key" autocomplete="off"
                            spellcheck="false" required placeholder="sk-sluice-…"
                            aria-describedby="key-hint";
                        p.hint id="key-hint" {
                            "The console acts with this key's permissions, never more. The key \
                             is not stored: only the session is."
                        }
                        p { button type="submit" id="signin" { "Sign in" } }
                    }
                } @else if provider.is_none() {
                    p { "Sign-in with a key is turned off on this gateway." }
                }
            }
        },
    )
}
