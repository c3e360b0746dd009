//! Models: what the user may use, each with ready-to-paste snippets for this gateway.

use maud::{html, Markup};

use super::{layout, Section};
use crate::console::session::Session;
use crate::console::{Ctx, Page};

pub fn page(cx: &Ctx<'_>, s: &Session) -> Page {
    let base = cx.base_url();
    let models: Vec<&str> = cx
        .snap
        .config
        .models
        .iter()
        .filter(|m| s.identity.grants.may_use_model(&m.name))
        .map(|m| m.name.as_str())
        .collect();
    let body = layout(
        "Models",
        Some(s),
        Section::Models,
        html! {
            h1 { "Models" }
            p.lead {
                "The models you may use through " code { (base) } ". The snippets read your key from "
                code { "SLUICE_API_KEY" } " (create one under " a href="/console/api" { "Settings › API" } ")."
            }
            @if models.is_empty() { p.notice.warn { "Your role allows no model." } }
            @for (i, m) in models.iter().enumerate() {
                section.card aria-labelledby=(format!("model-{i}-title")) {
                    h2 id=(format!("model-{i}-title")) { code { (m) } }
                    (snippet(i, "curl", &curl(&base, m)))
                    (snippet(i, "OpenAI SDK (Python)", &openai(&base, m)))
                    (snippet(i, "Anthropic SDK (Python)", &anthropic(&base, m)))
                    @if !speaks_anthropic(&cx.snap.config, m) {
                        p.hint { "This model's upstream speaks OpenAI's API: the Anthropic SDK needs a model served by an upstream with api = \"anthropic\"." }
                    }
                }
            }
        },
    );
    Page::html(200, body)
}

fn snippet(i: usize, title: &str, text: &str) -> Markup {
    let id = format!(
        "snippet-{i}-{}",
        title.split(' ').next().unwrap_or("x").to_ascii_lowercase()
    );
    html! {
        p.snippet-title { (title) }
        pre { code id=(id) { (text) } }
        p.actions {
            button.secondary type="button" data-copy=(id) data-status=(format!("{id}-status")) hidden
                aria-label=(format!("Copy the {title} snippet")) { "Copy" }
            span id=(format!("{id}-status")) role="status" {}
        }
    }
}

/// Whether every upstream serving `model` takes Anthropic's Messages API (`api = "anthropic"`,
/// or the built-in mock, which speaks both).
fn speaks_anthropic(config: &crate::config::Config, model: &str) -> bool {
    let Some(m) = config.models.iter().find(|m| m.name == model) else {
        return false;
    };
    let mut names: Vec<&str> = m.upstream.iter().map(String::as_str).collect();
    names.extend(m.targets.iter().flatten().map(|t| t.upstream.as_str()));
    names.iter().all(|n| {
        config.upstreams.iter().any(|u| {
            u.name == *n && (u.api == crate::config::UpstreamApi::Anthropic || u.builtin.is_some())
        })
    })
}

fn curl(base: &str, model: &str) -> String {
    format!(
        "curl {base}/v1/chat/completions \\\n  -H \"Authorization: Bearer $SLUICE_API_KEY\" \\\n  \
         -H \"Content-Type: application/json\" \\\n  \
         -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'"
    )
}

fn openai(base: &str, model: &str) -> String {
    format!(
        "import os\nfrom openai import OpenAI\n\n\
         client = OpenAI(base_url=\"{base}/v1\", api_key=os.environ[\"SLUICE_API_KEY\"])\n\
         reply = client.chat.completions.create(\n    model=\"{model}\",\n    \
         messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}],\n)\n\
         print(reply.choices[0].message.content)"
    )
}

fn anthropic(base: &str, model: &str) -> String {
    format!(
        "import os\nfrom anthropic import Anthropic\n\n\
         client = Anthropic(base_url=\"{base}\", api_key=os.environ[\"SLUICE_API_KEY\"])\n\
         message = client.messages.create(\n    model=\"{model}\",\n    max_tokens=256,\n    \
         messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}],\n)\n\
         print(message.content[0].text)"
    )
}
