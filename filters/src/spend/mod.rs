//! Spend: what every call costs, and budgets nobody can slip past (SPEC §15).
//!
//! - **Cost** = usage × the model's price ([`PriceSpec`] on `[[models]]`), in integer
//!   micro-dollars ([`Price::cost`], rounded up). The engine prices a finished request from the
//!   usage every route reports (streams included) and puts the [`Cost`] in the request's
//!   extensions before the chain's `on_log`, so the audit record (`cost_usd`), the budgets and
//!   `sluice_spend_usd_total` see one number. A model without a price costs 0 and counts in
//!   `sluice_unpriced_requests_total`.
//! - **Budgets** ([`BudgetSpec`] on orgs, users and keys) are checked by the `rate_limit`
//!   filter with the discipline of its token buckets ([`SpendGate`]): before the call the
//!   request's worst case (estimated prompt at the input price + its output ceiling at the
//!   output price) is reserved against every budget of the caller, all or none, under one lock
//!   ([`Ledger`]); after it the reservation is replaced by the real cost (a 2xx without usage
//!   keeps the reservation as its cost; a failure costs nothing). So concurrent requests can
//!   never overspend by more than their reservations.
//! - **Durability**: the ledger's per-day usage rows (date, org, user, key, model) are written
//!   to the store behind, every second, and the ledger's history is read back from the store
//!   every half second (the engine's `src/spend/`): a crash loses at most about that much.
//! - **Several instances**: with a shared [`SpendBackend`] (the engine installs one for a
//!   PostgreSQL store; the `rate_limit` filter brings one for `backend = "redis"`,
//!   `ratelimit/redis_budgets.rs`) reservations and settlements of budgeted requests are made
//!   there, atomically, so every instance sees the others' reservations and spend at once.
//!   Both configured: PostgreSQL's (the durable record; a Redis flush forgets its counters).

mod backend;
mod budget;
mod gate;
mod ledger;
mod price;

pub use backend::{BackendSlot, SpendBackend};
pub use budget::{BudgetSpec, Period};
pub use gate::{no_prices, RedisBackend, SpendGate, SpendMetrics};
pub use ledger::{
    history_start, Account, Charge, Ledger, Level, Reserve, RowKey, RowSums, Standing, StoredSpend,
    HISTORY_DAYS,
};
pub use price::{micros, usd_f64, usd_string, CallPrice, Cost, Price, PriceSpec};
