//! The in-memory spend ledger: what each org, user and key has spent (per day, recent days
//! only, plus all time), what requests in flight have reserved, and the per-day usage rows not
//! yet written to the store.
//!
//! One mutex guards it all, so a reservation against several budgets is all-or-none and two
//! concurrent requests can never both take the last dollars. The engine loads the history from
//! the store at start and every second ([`Ledger::install`]), and writes the pending rows
//! behind ([`Ledger::take_pending`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use time::{Date, Duration};

use super::budget::{BudgetSpec, Period};

/// The level a budget is set at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Org,
    User,
    Key,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Org, Level::User, Level::Key];

    pub fn label(self) -> &'static str {
        match self {
            Level::Org => "org",
            Level::User => "user",
            Level::Key => "key",
        }
    }
}

/// Whose money: an org, a user or a key by name.
pub type Account = (Level, Arc<str>);

/// Days of per-day history kept in memory: enough for any daily, weekly or monthly period.
pub const HISTORY_DAYS: i64 = 40;

#[derive(Debug, Default, Clone)]
struct History {
    total: i64,
    days: BTreeMap<Date, i64>,
}

impl History {
    fn add(&mut self, day: Date, micros: i64) {
        self.total = self.total.saturating_add(micros);
        *self.days.entry(day).or_default() += micros;
    }

    fn spent(&self, period: Period, today: Date) -> i64 {
        match period.start(today) {
            None => self.total,
            Some(start) => self.days.range(start..).map(|(_, v)| *v).sum(),
        }
    }
}

/// The dimensions of a per-day usage row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub date: Date,
    pub org: Arc<str>,
    pub user: Arc<str>,
    pub key: Arc<str>,
    pub model: Arc<str>,
}

/// What a per-day usage row adds up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowSums {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
}

impl RowSums {
    pub fn add(&mut self, o: &RowSums) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost_micros += o.cost_micros;
    }
}

/// A budget a request is checked against.
#[derive(Debug, Clone)]
pub struct Charge {
    pub level: Level,
    pub name: Arc<str>,
    pub budget: BudgetSpec,
}

/// Where a budget stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: i64,
    pub spent: i64,
    pub reserved: i64,
}

impl Standing {
    pub fn remaining(&self) -> i64 {
        self.limit - self.spent - self.reserved
    }
}

/// The answer to [`Ledger::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Reserved against every budget; the least remaining after it.
    Reserved { remaining: i64 },
    /// `charges[index]` cannot hold the cost; nothing was reserved.
    Refused { index: usize, standing: Standing },
}

/// Spend as the store holds it, for [`Ledger::install`].
#[derive(Debug, Default, Clone)]
pub struct StoredSpend {
    /// Per account and day, for the days since [`history_start`].
    pub recent: Vec<(Level, String, Date, i64)>,
    /// Per account, all time.
    pub totals: Vec<(Level, String, i64)>,
}

/// The first day whose spend the ledger keeps per day.
pub fn history_start(today: Date) -> Date {
    today - Duration::days(HISTORY_DAYS)
}

#[derive(Default)]
struct Book {
    history: HashMap<Account, History>,
    reserved: HashMap<Account, i64>,
    pending: HashMap<RowKey, RowSums>,
}

/// The ledger; one per process (in [`crate::Shared`] under [`Ledger::SHARED_KEY`]).
#[derive(Default)]
pub struct Ledger {
    book: Mutex<Book>,
}

impl Ledger {
    pub const SHARED_KEY: &'static str = "spend:ledger";

    /// The process's ledger in `shared`.
    pub fn in_shared(shared: &crate::Shared) -> Arc<Ledger> {
        shared
            .get_or_try_init(Self::SHARED_KEY, || {
                Ok::<_, std::convert::Infallible>(Ledger::default())
            })
            .unwrap_or_else(|never| match never {})
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `cost` against every charge, or none if one of them cannot hold it.
    pub fn reserve(&self, charges: &[Charge], cost: i64, today: Date) -> Reserve {
        let mut book = self.lock();
        let mut remaining = i64::MAX;
        for (index, c) in charges.iter().enumerate() {
            let account = (c.level, c.name.clone());
            let standing = Standing {
                limit: c.budget.micros(),
                spent: book
                    .history
                    .get(&account)
                    .map_or(0, |h| h.spent(c.budget.period, today)),
                reserved: book.reserved.get(&account).copied().unwrap_or(0),
            };
            // A request that costs nothing (an unpriced model) spends no budget, spent or not.
            if cost > 0 && standing.remaining() < cost {
                return Reserve::Refused { index, standing };
            }
            remaining = remaining.min(standing.remaining() - cost);
        }
        for c in charges {
            *book.reserved.entry((c.level, c.name.clone())).or_default() += cost;
        }
        Reserve::Reserved { remaining }
    }

    /// Gives a reservation back.
    pub fn release(&self, accounts: &[Account], cost: i64) {
        release(&mut self.lock(), accounts, cost);
    }

    /// Gives a reservation back and records the request's real cost and usage row, under one
    /// lock (so no other request sees the budget without both).
    pub fn settle(&self, accounts: &[Account], reserved: i64, row: Option<(RowKey, RowSums)>) {
        if accounts.is_empty() && row.is_none() {
            return;
        }
        let mut book = self.lock();
        release(&mut book, accounts, reserved);
        if let Some((row, sums)) = row {
            record(&mut book, row, sums);
        }
    }

    /// Records a finished request: its cost to the org, user and key, and its usage row.
    pub fn record(&self, row: RowKey, sums: RowSums) {
        record(&mut self.lock(), row, sums);
    }

    /// Where a budget stands now.
    pub fn standing(&self, charge: &Charge, today: Date) -> Standing {
        let book = self.lock();
        let account = (charge.level, charge.name.clone());
        Standing {
            limit: charge.budget.micros(),
            spent: book
                .history
                .get(&account)
                .map_or(0, |h| h.spent(charge.budget.period, today)),
            reserved: book.reserved.get(&account).copied().unwrap_or(0),
        }
    }

    /// The rows not yet written; give them back with [`Ledger::untake`] if the write fails.
    pub fn take_pending(&self) -> Vec<(RowKey, RowSums)> {
        self.lock().pending.drain().collect()
    }

    pub fn untake(&self, rows: Vec<(RowKey, RowSums)>) {
        let mut book = self.lock();
        for (k, v) in rows {
            book.pending.entry(k).or_default().add(&v);
        }
    }

    /// Replaces the history by the store's (which holds every instance's written spend), plus
    /// this instance's rows not yet written.
    pub fn install(&self, stored: StoredSpend) {
        let mut history: HashMap<Account, History> = HashMap::new();
        for (level, name, day, micros) in stored.recent {
            history
                .entry((level, Arc::from(name)))
                .or_default()
                .days
                .insert(day, micros);
        }
        for (level, name, micros) in stored.totals {
            history.entry((level, Arc::from(name))).or_default().total = micros;
        }
        let mut book = self.lock();
        for (row, sums) in &book.pending {
            if sums.cost_micros == 0 {
                continue;
            }
            for account in [
                (Level::Org, row.org.clone()),
                (Level::User, row.user.clone()),
                (Level::Key, row.key.clone()),
            ] {
                history
                    .entry(account)
                    .or_default()
                    .add(row.date, sums.cost_micros);
            }
        }
        book.history = history;
    }
}

fn record(book: &mut Book, row: RowKey, sums: RowSums) {
    if sums.cost_micros != 0 {
        for account in [
            (Level::Org, row.org.clone()),
            (Level::User, row.user.clone()),
            (Level::Key, row.key.clone()),
        ] {
            book.history
                .entry(account)
                .or_default()
                .add(row.date, sums.cost_micros);
        }
    }
    book.pending.entry(row).or_default().add(&sums);
}

fn release(book: &mut Book, accounts: &[Account], cost: i64) {
    for a in accounts {
        if let Some(r) = book.reserved.get_mut(a) {
            *r -= cost;
            if *r <= 0 {
                book.reserved.remove(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn charge(level: Level, name: &str, usd: f64, period: Period) -> Charge {
        Charge {
            level,
            name: Arc::from(name),
            budget: BudgetSpec { usd, period },
        }
    }

    fn row(day: Date) -> RowKey {
        RowKey {
            date: day,
            org: Arc::from("acme"),
            user: Arc::from("alice"),
            key: Arc::from("k1"),
            model: Arc::from("m"),
        }
    }

    #[test]
    fn reservations_are_all_or_none_and_reconciled() {
        let l = Ledger::default();
        let today = date!(2026 - 12 - 07);
        let charges = [
            charge(Level::Org, "acme", 10.0, Period::Monthly),
            charge(Level::User, "alice", 1.0, Period::Daily),
        ];
        assert_eq!(
            l.reserve(&charges, 600_000, today),
            Reserve::Reserved { remaining: 400_000 }
        );
        let Reserve::Refused { index, standing } = l.reserve(&charges, 600_000, today) else {
            panic!("the second reservation must not fit the user's $1");
        };
        assert_eq!(index, 1);
        assert_eq!(standing.reserved, 600_000);
        // The org's budget was not charged by the refused request.
        assert_eq!(l.standing(&charges[0], today).reserved, 600_000);
        let accounts: Vec<Account> = charges.iter().map(|c| (c.level, c.name.clone())).collect();
        l.release(&accounts, 600_000);
        let sums = RowSums {
            requests: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_micros: 250_000,
        };
        l.record(row(today), sums);
        assert_eq!(
            l.standing(&charges[1], today),
            Standing {
                limit: 1_000_000,
                spent: 250_000,
                reserved: 0
            }
        );
        // Yesterday's spend is not today's, but is this month's.
        l.record(row(date!(2026 - 12 - 06)), sums);
        assert_eq!(l.standing(&charges[1], today).spent, 250_000);
        assert_eq!(l.standing(&charges[0], today).spent, 500_000);
        let pending = l.take_pending();
        assert_eq!(pending.len(), 2);
        assert!(l.take_pending().is_empty());
        l.untake(pending);
        assert_eq!(l.take_pending().len(), 2);
    }

    #[test]
    fn install_keeps_unwritten_rows() {
        let l = Ledger::default();
        let today = date!(2026 - 12 - 07);
        let c = charge(Level::Key, "k1", 5.0, Period::Total);
        l.record(
            row(today),
            RowSums {
                cost_micros: 7,
                ..RowSums::default()
            },
        );
        l.install(StoredSpend {
            recent: vec![(Level::Key, "k1".into(), today, 100)],
            totals: vec![(Level::Key, "k1".into(), 1000)],
        });
        assert_eq!(l.standing(&c, today).spent, 1007);
        let daily = charge(Level::Key, "k1", 5.0, Period::Daily);
        assert_eq!(l.standing(&daily, today).spent, 107);
    }

    #[test]
    fn free_requests_pass_even_an_overdrawn_budget() {
        let l = Ledger::default();
        let today = date!(2026 - 12 - 07);
        let c = [charge(Level::User, "alice", 0.000001, Period::Daily)];
        l.record(
            row(today),
            RowSums {
                cost_micros: 2,
                ..RowSums::default()
            },
        );
        assert!(matches!(l.reserve(&c, 1, today), Reserve::Refused { .. }));
        assert_eq!(l.reserve(&c, 0, today), Reserve::Reserved { remaining: -1 });
    }
}
