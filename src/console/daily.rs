//! Usage per day from the store's spend rows (SPEC §15): requests, tokens and spend of one
//! user for the last days, shared by every instance on the same store.

use std::collections::BTreeMap;

use sluice_filters::spend::usd_f64;
use time::{Date, Duration, OffsetDateTime};

use crate::state::EngineState;
use crate::store::spend::DailyRow;

/// One day of a user's use of the API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageDay {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// The user's requests, tokens and spend per day for the `days` days up to today (UTC),
/// oldest first, days without use included. This instance's pending spend is written first,
/// so a call just made shows.
pub async fn usage_by_day(
    state: &EngineState,
    user: &str,
    days: i64,
) -> Result<Vec<UsageDay>, String> {
    let today = OffsetDateTime::now_utc().date();
    let from = today - Duration::days(days.saturating_sub(1));
    let spend = state.store.spend();
    let unavailable = |e| format!("Usage is unavailable right now (the store: {e}).");
    spend.flush().await.map_err(unavailable)?;
    let rows = spend
        .store()
        .daily_spend(Some(user), from, today)
        .await
        .map_err(unavailable)?;
    Ok(per_day(&rows, from, today))
}

fn date_str(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn per_day(rows: &[DailyRow], from: Date, to: Date) -> Vec<UsageDay> {
    let mut by_day: BTreeMap<String, UsageDay> = BTreeMap::new();
    let mut d = from;
    while d <= to {
        let date = date_str(d);
        by_day.insert(
            date.clone(),
            UsageDay {
                date,
                ..UsageDay::default()
            },
        );
        let Some(next) = d.next_day() else { break };
        d = next;
    }
    for r in rows {
        let Some(day) = by_day.get_mut(r.date.as_str()) else {
            continue;
        };
        day.requests += u64::try_from(r.sums.requests).unwrap_or(0);
        day.prompt_tokens += u64::try_from(r.sums.prompt_tokens).unwrap_or(0);
        day.completion_tokens += u64::try_from(r.sums.completion_tokens).unwrap_or(0);
        day.cost_usd += usd_f64(r.sums.cost_micros);
    }
    by_day.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_filters::spend::RowSums;
    use time::Month;

    fn row(date: &str, model: &str, requests: i64, cost_micros: i64) -> DailyRow {
        DailyRow {
            date: date.into(),
            org: "acme".into(),
            user: "alice".into(),
            key: "k1".into(),
            model: model.into(),
            sums: RowSums {
                requests,
                prompt_tokens: 10 * requests,
                completion_tokens: requests,
                cost_micros,
            },
        }
    }

    #[test]
    fn rows_sum_per_day_and_every_day_is_listed() {
        let rows = vec![
            row("2026-11-29", "mock-echo", 2, 1_500),
            row("2026-11-29", "mock-other", 1, 500),
            row("2026-11-01", "mock-echo", 1, 0),
            row("2025-01-01", "mock-echo", 9, 9), // outside the range
        ];
        let days = per_day(
            &rows,
            Date::from_calendar_date(2026, Month::October, 31).unwrap(),
            Date::from_calendar_date(2026, Month::November, 29).unwrap(),
        );
        assert_eq!(days.len(), 30);
        assert_eq!(days[0].date, "2026-10-31");
        let today = days.last().unwrap();
        assert_eq!(today.date, "2026-11-29");
        assert_eq!(
            (today.requests, today.prompt_tokens, today.completion_tokens),
            (3, 30, 3)
        );
        assert!((today.cost_usd - 0.002).abs() < 1e-12);
        assert_eq!(days[1].requests, 1);
        assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 4);
    }
}
