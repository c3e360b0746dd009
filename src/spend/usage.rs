//! `GET /v1/usage` (the caller's own user) and `GET /admin/v1/usage?group_by=…` (SPEC §15).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sluice_filters::spend::{usd_f64, BudgetSpec, Charge, Level, RowSums, Standing};
use sluice_filters::{Cx, Identity, Reply};
use time::{Date, Duration, OffsetDateTime};

use crate::config::Config;
use crate::state::EngineState;
use crate::store::spend::GroupBy;
use crate::store::{Store, StoreError};

/// The longest range one request may ask for (the answer stays bounded).
const MAX_DAYS: i64 = 366;

/// A query's `from` and `to` (inclusive): by default the current calendar month (UTC) up to
/// today.
fn range(query: Option<&str>) -> Result<(Date, Date), Reply> {
    let today = OffsetDateTime::now_utc().date();
    let to = match param(query, "to") {
        Some(s) => parse(s, "to")?,
        None => today,
    };
    let from = match param(query, "from") {
        Some(s) => parse(s, "from")?,
        None => to.replace_day(1).unwrap_or(to),
    };
    if from > to {
        return Err(bad("from", "`from` must not be after `to`."));
    }
    if to - from >= Duration::days(MAX_DAYS) {
        return Err(bad(
            "from",
            &format!("Ask for at most {MAX_DAYS} days at a time."),
        ));
    }
    Ok((from, to))
}

fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn parse(s: &str, name: &str) -> Result<Date, Reply> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).map_err(|_| {
        bad(
            name,
            &format!("`{name}` must be a date as YYYY-MM-DD (UTC)."),
        )
    })
}

fn bad(param: &str, msg: &str) -> Reply {
    Reply::error(400, "invalid_parameter", msg.to_string()).with_param(param)
}

/// Reads the store once this instance's pending spend rows are written to it, so the answer
/// includes the caller's last request. A store that cannot be written or read: 503.
async fn read_flushed<T>(
    state: &EngineState,
    read: impl AsyncFnOnce(&Store) -> Result<T, StoreError>,
) -> Result<T, Reply> {
    let spend = state.store.spend();
    spend.flush().await.map_err(|e| unavailable(&e))?;
    read(spend.store()).await.map_err(|e| unavailable(&e))
}

fn unavailable(e: &StoreError) -> Reply {
    tracing::warn!(error = %e, "usage: the store cannot be read");
    Reply::error(
        503,
        "store_unavailable",
        "Usage is kept in the store, which cannot be read right now. Retry shortly.",
    )
    .with_header("retry-after", "1")
}

fn date_str(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The caller's tightest budget (org, user or key) and where it stands.
fn tightest(state: &EngineState, config: &Config, id: &Identity) -> Option<(BudgetSpec, Standing)> {
    let ledger = super::ledger(&state.shared);
    let today = OffsetDateTime::now_utc().date();
    let org = config
        .orgs
        .iter()
        .find(|o| *o.name == *id.org)
        .and_then(|o| o.budget);
    let user = config
        .users
        .iter()
        .find(|u| *u.name == *id.user)
        .and_then(|u| u.budget);
    let key = config
        .keys
        .iter()
        .find(|k| *k.id == *id.key_id)
        .and_then(|k| k.budget);
    [
        (Level::Org, &id.org, org),
        (Level::User, &id.user, user),
        (Level::Key, &id.key_id, key),
    ]
    .into_iter()
    .filter_map(|(level, name, budget)| {
        let c = Charge {
            level,
            name: name.clone(),
            budget: budget?,
        };
        Some((c.budget, ledger.standing(&c, today)))
    })
    .min_by_key(|(_, s)| s.remaining())
}

fn budget_json(b: &BudgetSpec, s: &Standing) -> Value {
    let resets = b.period.resets_at(OffsetDateTime::now_utc()).and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    json!({
        "usd": b.usd,
        "period": b.period.as_str(),
        "spent_usd": usd_f64(s.spent),
        "resets_at": resets,
    })
}

fn sums_json(obj: &mut serde_json::Map<String, Value>, s: &RowSums) {
    obj.insert("requests".into(), s.requests.into());
    obj.insert("prompt_tokens".into(), s.prompt_tokens.into());
    obj.insert("completion_tokens".into(), s.completion_tokens.into());
    obj.insert("cost_usd".into(), json!(usd_f64(s.cost_micros)));
}

/// `GET /v1/usage?from=&to=`: the caller's user's requests, tokens and spend per day and model.
pub async fn own_usage(
    state: &EngineState,
    config: &Config,
    cx: &Cx,
    query: Option<&str>,
) -> Reply {
    let Some(id) = cx.identity.as_ref() else {
        return Reply::error(
            403,
            "permission_denied",
            "Usage is per user: this gateway's chain has no auth filter.",
        );
    };
    let (from, to) = match range(query) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let rows = match read_flushed(state, async |s| {
        s.daily_spend(Some(&id.user), from, to).await
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut by_day_model: BTreeMap<(String, String), RowSums> = BTreeMap::new();
    for r in rows {
        by_day_model
            .entry((r.date, r.model))
            .or_default()
            .add(&r.sums);
    }
    let data: Vec<Value> = by_day_model
        .into_iter()
        .map(|((date, model), s)| {
            let mut obj = serde_json::Map::new();
            obj.insert("date".into(), date.into());
            obj.insert("model".into(), model.into());
            sums_json(&mut obj, &s);
            Value::Object(obj)
        })
        .collect();
    let budget = tightest(state, config, id).map(|(b, s)| budget_json(&b, &s));
    Reply::json(
        200,
        &json!({
            "object": "usage",
            "user": &*id.user,
            "from": date_str(from),
            "to": date_str(to),
            "budget": budget,
            "data": data,
        }),
    )
}

/// `GET /admin/v1/usage?group_by=org|user|key|model&from=&to=` (default `group_by=user`).
pub async fn admin_usage(state: &EngineState, query: Option<&str>) -> Reply {
    let by = match param(query, "group_by") {
        None => GroupBy::User,
        Some(s) => match GroupBy::parse(s) {
            Some(g) => g,
            None => {
                return bad(
                    "group_by",
                    "`group_by` must be one of org, user, key, model.",
                )
            }
        },
    };
    let (from, to) = match range(query) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let rows = match read_flushed(state, async |s| s.grouped_spend(by, from, to).await).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(name, s)| {
            let mut obj = serde_json::Map::new();
            obj.insert(by.label().into(), Value::String(name.to_string()));
            sums_json(&mut obj, &s);
            Value::Object(obj)
        })
        .collect();
    Reply::json(
        200,
        &json!({"object": "list", "group_by": by.label(), "from": date_str(from), "to": date_str(to), "data": data}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_default_to_this_month_and_are_checked() {
        let (from, to) = range(None).unwrap();
        assert_eq!(from.day(), 1);
        assert_eq!(to, OffsetDateTime::now_utc().date());
        let (from, to) = range(Some("from=2026-01-05&to=2026-02-01")).unwrap();
        assert_eq!(
            (date_str(from), date_str(to)),
            ("2026-01-05".into(), "2026-02-01".into())
        );
        assert!(range(Some("from=2026-02-02&to=2026-02-01")).is_err());
        assert!(range(Some("from=2026-13-01")).is_err());
        assert!(range(Some("from=2024-01-01&to=2026-01-01")).is_err());
    }
}
