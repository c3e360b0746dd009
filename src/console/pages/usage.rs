//! Usage: the user's requests and tokens per day for 30 days, as a chart and a table.
//!
//! The rows are [`UsageDay`]s from the store's spend rows (SPEC §15), shared by every
//! instance: requests, tokens and spend (`cost_usd`).

use maud::{html, Markup};

use super::{layout, Section};
use crate::console::daily::{self, UsageDay};
use crate::console::session::Session;
use crate::console::{Ctx, Page};

pub const DAYS: i64 = 30;

pub async fn page(cx: &Ctx<'_>, s: &Session) -> Page {
    let days = daily::usage_by_day(cx.state, &s.identity.user, DAYS).await;
    let body = layout(
        "Usage",
        Some(s),
        Section::Usage,
        html! {
            h1 { "Usage" }
            p.lead { "Your API requests, tokens and spend per day (UTC), last " (DAYS) " days." }
            @match &days {
                Err(e) => p.notice.warn { (e) },
                Ok(days) => {
                    (chart(days))
                    (table(days))
                    @if days.iter().all(|d| d.cost_usd == 0.0) {
                        p.hint { "Spend: nothing priced was used in these days (prices are set per model, SPEC §15)." }
                    }
                }
            }
        },
    );
    Page::html(200, body)
}

/// A bar per day (requests), drawn as SVG attributes: no inline style, no script.
fn chart(days: &[UsageDay]) -> Markup {
    let (w, h, pad) = (720.0_f64, 200.0_f64, 24.0_f64);
    let max = days.iter().map(|d| d.requests).max().unwrap_or(0).max(1) as f64;
    let slot = (w - 2.0 * pad) / days.len().max(1) as f64;
    let total: u64 = days.iter().map(|d| d.requests).sum();
    html! {
        figure {
            svg.chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {w} {h}")) role="img"
                aria-labelledby="chart-title" {
                title id="chart-title" { "Requests per day: " (total) " in " (days.len()) " days" }
                line.axis x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) {}
                text x=(pad) y=(14) { "max " (max as u64) " requests/day" }
                @for (i, d) in days.iter().enumerate() {
                    @let bh = (d.requests as f64 / max) * (h - 2.0 * pad - 8.0);
                    rect.bar x=(format!("{:.1}", pad + i as f64 * slot + 2.0)) y=(format!("{:.1}", h - pad - bh))
                        width=(format!("{:.1}", (slot - 4.0).max(1.0))) height=(format!("{:.1}", bh)) {
                        title { (d.date) ": " (d.requests) " requests" }
                    }
                    @if i % 5 == 0 || i + 1 == days.len() {
                        text x=(format!("{:.1}", pad + i as f64 * slot)) y=(h - 8.0) { (d.date.get(5..).unwrap_or_default()) }
                    }
                }
            }
            figcaption.hint { "Requests per day. The table below has the numbers." }
        }
    }
}

fn table(days: &[UsageDay]) -> Markup {
    html! {
        table id="usage" {
            thead { tr { th { "Date" } th.num { "Requests" } th.num { "Prompt tokens" } th.num { "Completion tokens" } th.num { "Spend (USD)" } } }
            tbody {
                @for d in days.iter().rev() {
                    tr data-date=(d.date) {
                        td { (d.date) }
                        td.num.requests { (d.requests) }
                        td.num { (d.prompt_tokens) }
                        td.num { (d.completion_tokens) }
                        td.num.spend { (format!("{:.4}", d.cost_usd)) }
                    }
                }
            }
        }
    }
}
