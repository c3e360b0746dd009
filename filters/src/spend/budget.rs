//! Budgets (`budget = { usd, period }` on orgs, users and keys) and their periods in UTC.

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime, Time};

use super::price::micros;
use crate::ConfigError;

/// A budget as configured.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
pub struct BudgetSpec {
    /// US dollars per period (an integer or a decimal).
    pub usd: f64,
    pub period: Period,
}

/// How long a budget's spend accumulates before it starts again from zero (UTC).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From 00:00 UTC to the next.
    Daily,
    /// ISO weeks: from Monday 00:00 UTC.
    Weekly,
    /// Calendar months, from the 1st 00:00 UTC.
    Monthly,
    /// Never resets.
    Total,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }

    /// The first day of the period that holds `today` (`None` for `total`: all of time).
    pub fn start(self, today: Date) -> Option<Date> {
        match self {
            Period::Daily => Some(today),
            Period::Weekly => {
                let back = i64::from(today.weekday().number_days_from_monday());
                Some(today - Duration::days(back))
            }
            Period::Monthly => today.replace_day(1).ok(),
            Period::Total => None,
        }
    }

    /// When the period holding `now` ends (`None` for `total`).
    pub fn resets_at(self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let today = now.date();
        let next: Date = match self {
            Period::Daily => today.next_day()?,
            Period::Weekly => self.start(today)? + Duration::days(7),
            Period::Monthly => {
                let (y, m) = match today.month() {
                    Month::December => (today.year() + 1, Month::January),
                    m => (today.year(), m.next()),
                };
                Date::from_calendar_date(y, m, 1).ok()?
            }
            Period::Total => return None,
        };
        Some(next.with_time(Time::MIDNIGHT).assume_utc())
    }
}

/// The most a budget may say, in US dollars.
const MAX_USD: f64 = 1e12;

impl BudgetSpec {
    /// Checks `usd` (finite, from 0 to 10^12), naming `path` in errors.
    pub fn validate(&self, path: &str, errs: &mut Vec<ConfigError>) {
        if !self.usd.is_finite() || !(0.0..=MAX_USD).contains(&self.usd) {
            errs.push(ConfigError::new(
                format!("{path}.usd"),
                "must be a number of US dollars from 0 to 1000000000000",
            ));
        }
    }

    /// The budget in micro-dollars.
    pub fn micros(&self) -> i64 {
        i64::try_from(micros(self.usd)).unwrap_or(i64::MAX)
    }

    /// Whether a key's budget (`self`) stays within its maker's (`parent`): same period, no
    /// more dollars.
    pub fn narrows(&self, parent: &BudgetSpec) -> bool {
        self.period == parent.period && self.micros() <= parent.micros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn periods_start_and_reset_in_utc() {
        // 2026-12-07 is a Monday.
        let mon = date!(2026 - 12 - 07);
        let sun = date!(2026 - 12 - 13);
        assert_eq!(Period::Weekly.start(mon), Some(mon));
        assert_eq!(Period::Weekly.start(sun), Some(mon));
        assert_eq!(Period::Monthly.start(sun), Some(date!(2026 - 12 - 01)));
        assert_eq!(Period::Daily.start(sun), Some(sun));
        assert_eq!(Period::Total.start(sun), None);
        let now = datetime!(2026-12-31 23:59:59 UTC);
        assert_eq!(
            Period::Monthly.resets_at(now),
            Some(datetime!(2027-01-01 00:00 UTC))
        );
        assert_eq!(
            Period::Daily.resets_at(now),
            Some(datetime!(2027-01-01 00:00 UTC))
        );
        // Thursday 31 Dec 2026 → Monday 4 Jan 2027.
        assert_eq!(
            Period::Weekly.resets_at(now),
            Some(datetime!(2027-01-04 00:00 UTC))
        );
        assert_eq!(Period::Total.resets_at(now), None);
    }

    #[test]
    fn narrowing_needs_the_same_period_and_no_more_dollars() {
        let p = BudgetSpec {
            usd: 10.0,
            period: Period::Daily,
        };
        let less = BudgetSpec { usd: 5.0, ..p };
        let more = BudgetSpec { usd: 10.5, ..p };
        let weekly = BudgetSpec {
            period: Period::Weekly,
            ..less
        };
        assert!(less.narrows(&p) && p.narrows(&p));
        assert!(!more.narrows(&p) && !weekly.narrows(&p));
    }

    #[test]
    fn integer_and_decimal_dollars_parse() {
        let b: BudgetSpec = toml::from_str("usd = 50\nperiod = \"daily\"").unwrap();
        assert_eq!(b.micros(), 50_000_000);
        let b: BudgetSpec = toml::from_str("usd = 0.25\nperiod = \"total\"").unwrap();
        assert_eq!(b.micros(), 250_000);
        assert!(toml::from_str::<BudgetSpec>("usd = 1\nperiod = \"yearly\"").is_err());
    }
}
