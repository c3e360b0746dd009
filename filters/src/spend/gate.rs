//! The budget check the `rate_limit` filter runs: a worst-case reservation before the call,
//! replaced by the real cost after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus::{CounterVec, IntCounterVec, Opts};
use time::OffsetDateTime;

use super::backend::{BackendSlot, SpendBackend};
use super::budget::{BudgetSpec, Period};
use super::ledger::{Account, Charge, Ledger, Level, Reserve, RowKey, RowSums, Standing};
use super::price::{usd_string, CallPrice, Cost, Price};
use crate::api::TokenCost;
use crate::auth::{Derived, RuntimeKeys};
use crate::config::ConfigErrors;
use crate::policy::Policy;
use crate::{Cx, Exchange, Identity, JsonBody, Reply, Route, Shared};

/// What a request reserved, kept in [`Cx::extensions`] until `on_log`.
#[derive(Clone)]
struct SpendReservation {
    accounts: Vec<Account>,
    micros: i64,
    /// Made in a shared backend, not in the ledger.
    shared: Option<SharedReservation>,
}

#[derive(Clone)]
struct SharedReservation {
    backend: Arc<dyn SpendBackend>,
    id: String,
    org: Arc<str>,
    charges: Vec<Charge>,
}

/// Budgets in the `rate_limit` filter's Redis (`backend = "redis"`).
pub struct RedisBackend {
    pub backend: Arc<dyn SpendBackend>,
    /// `on_backend_error = "deny"`: a request Redis cannot reserve for is refused; else it is
    /// reserved in this process's ledger.
    pub deny: bool,
    /// `sluice_rate_limit_backend_errors_total{op="check"}` / `{op="reconcile"}`: a reservation
    /// or a settlement Redis failed (whatever `deny` decides, it is counted).
    pub errors: (prometheus::IntCounter, prometheus::IntCounter),
}

/// The budgets of one config, and the ledger they are charged in.
pub struct SpendGate {
    orgs: HashMap<Arc<str>, BudgetSpec>,
    users: HashMap<Arc<str>, BudgetSpec>,
    keys: HashMap<Arc<str>, BudgetSpec>,
    prices: HashMap<Arc<str>, Price>,
    ledger: Arc<Ledger>,
    /// A PostgreSQL store's backend, installed by the engine.
    backend: Arc<BackendSlot>,
    redis: Option<RedisBackend>,
    /// Unix second of the last warning about a failing backend (at most one every 10 s).
    warned_at: AtomicI64,
    exceeded: IntCounterVec,
    /// Keys made through the key API, and whether any of them has a budget.
    store_keys: Arc<RuntimeKeys>,
    any_store_budget: Derived<bool>,
}

/// No prices (for policies built without any).
pub fn no_prices() -> &'static HashMap<String, Price> {
    static EMPTY: OnceLock<HashMap<String, Price>> = OnceLock::new();
    EMPTY.get_or_init(HashMap::new)
}

impl SpendGate {
    pub fn build(
        policy: &Policy<'_>,
        shared: &Shared,
        redis: Option<RedisBackend>,
    ) -> Result<SpendGate, ConfigErrors> {
        let ledger = Ledger::in_shared(shared);
        let exceeded = shared
            .metric("sluice_budget_exceeded_total", || {
                IntCounterVec::new(
                    Opts::new(
                        "sluice_budget_exceeded_total",
                        "Requests refused because a budget was spent, by level (org, user, key).",
                    ),
                    &["level"],
                )
            })
            .map_err(|e| ConfigErrors::one("budget", format!("cannot register metrics: {e}")))?;
        for l in Level::ALL {
            exceeded.with_label_values(&[l.label()]);
        }
        let by_name = |items: Vec<(&str, Option<BudgetSpec>)>| {
            items
                .into_iter()
                .filter_map(|(n, b)| Some((Arc::from(n), b?)))
                .collect::<HashMap<Arc<str>, BudgetSpec>>()
        };
        Ok(SpendGate {
            orgs: by_name(policy.orgs.iter().map(|o| (&*o.name, o.budget)).collect()),
            users: by_name(policy.users.iter().map(|u| (&*u.name, u.budget)).collect()),
            keys: by_name(policy.keys.iter().map(|k| (&*k.id, k.budget)).collect()),
            prices: policy
                .prices
                .iter()
                .map(|(m, p)| (Arc::from(m.as_str()), *p))
                .collect(),
            ledger,
            backend: BackendSlot::in_shared(shared),
            redis,
            warned_at: AtomicI64::new(0),
            exceeded: (*exceeded).clone(),
            store_keys: RuntimeKeys::in_shared(shared),
            any_store_budget: Derived::default(),
        })
    }

    /// The key-level budgets a request is held to: its key's own (a configured key's, or a
    /// store key's), then each ancestor's (a key made by a key is held to its makers' budgets
    /// too, so minting keys never multiplies a budget).
    fn key_budgets(
        &self,
        key_id: &Arc<str>,
        ancestors: &[Arc<str>],
    ) -> Vec<(Arc<str>, BudgetSpec)> {
        let table = self.store_keys.table();
        let store_has_budgets = !table.is_empty()
            && self
                .any_store_budget
                .get(&table, |t| t.iter().any(|k| k.budget.is_some()))
                .1;
        if self.keys.is_empty() && !store_has_budgets {
            return Vec::new();
        }
        std::iter::once(key_id)
            .chain(ancestors.iter())
            .filter_map(|id| {
                if let Some((k, b)) = self.keys.get_key_value(id) {
                    return Some((k.clone(), *b));
                }
                if !store_has_budgets {
                    return None;
                }
                table.get(id).and_then(|k| Some((k.id.clone(), k.budget?)))
            })
            .collect()
    }

    /// Every budget that applies to the caller, org → user → key (and the key's ancestors).
    fn charges(&self, id: &Identity) -> Vec<Charge> {
        let mut out = Vec::new();
        if let Some(b) = self.orgs.get(&id.org) {
            out.push(Charge {
                level: Level::Org,
                name: id.org.clone(),
                budget: *b,
            });
        }
        if let Some(b) = self.users.get(&id.user) {
            out.push(Charge {
                level: Level::User,
                name: id.user.clone(),
                budget: *b,
            });
        }
        for (name, budget) in self.key_budgets(&id.key_id, &id.ancestors) {
            out.push(Charge {
                level: Level::Key,
                name,
                budget,
            });
        }
        out
    }

    /// The request's worst-case cost: estimated prompt at the input price plus its output
    /// ceiling (or `default_max_tokens`, times `n`) at the output price.
    fn worst_case(&self, body: &JsonBody, cx: &Cx, default_max_tokens: u64) -> i64 {
        if let Some(p) = cx.extensions.get::<CallPrice>() {
            return p.micros;
        }
        let Some(price) = cx.model.as_deref().and_then(|m| self.prices.get(m)) else {
            return 0;
        };
        let completion = cx
            .max_tokens
            .unwrap_or(default_max_tokens)
            .saturating_mul(cx.choices.max(1));
        let (prompt, completion) = match cx.api.token_cost() {
            TokenCost::Free => (0, 0),
            TokenCost::PromptOnly => (cx.api.prompt_tokens(body), 0),
            TokenCost::Generation => (cx.api.prompt_tokens(body), completion),
        };
        i64::try_from(price.cost(prompt, completion)).unwrap_or(i64::MAX)
    }

    /// Reserves the request's worst case against every budget of the caller; the refusal when
    /// one cannot hold it. Sets `x-sluice-budget-remaining-usd` when a budget applies.
    /// `Err`: Redis failed under `on_backend_error = "deny"` (the filter answers it).
    pub async fn on_request(
        &self,
        body: &JsonBody,
        cx: &mut Cx,
        default_max_tokens: u64,
    ) -> Result<Option<Reply>, String> {
        let Some(id) = cx.identity.as_ref() else {
            return Ok(None);
        };
        let charges = self.charges(id);
        if charges.is_empty() {
            return Ok(None);
        }
        let org = id.org.clone();
        let cost = self.worst_case(body, cx, default_max_tokens);
        let now = OffsetDateTime::now_utc();
        let (decision, shared) = self.reserve(&org, &charges, cost, now).await?;
        Ok(match decision {
            Reserve::Reserved { remaining } => {
                set_remaining(cx, remaining);
                cx.extensions.insert(SpendReservation {
                    accounts: charges.iter().map(|c| (c.level, c.name.clone())).collect(),
                    micros: cost,
                    shared: shared.map(|(backend, id)| SharedReservation {
                        backend,
                        id,
                        org,
                        charges: charges.clone(),
                    }),
                });
                None
            }
            Reserve::Refused { index, standing } => {
                let c = &charges[index];
                self.exceeded.with_label_values(&[c.level.label()]).inc();
                set_remaining(cx, standing.remaining());
                Some(refusal(c, &standing, cost, now))
            }
        })
    }

    /// Reserves in the shared backend when there is one (it and the id are returned), else in
    /// the ledger. A PostgreSQL store's backend wins over Redis: its spend is the durable
    /// record the usage API reads, while Redis's counters are forgotten by a flush. When the
    /// shared backend fails, each instance holds the budget alone until it is back (Redis
    /// under `on_backend_error = "deny"`: `Err`, the request is refused).
    async fn reserve(
        &self,
        org: &str,
        charges: &[Charge],
        cost: i64,
        now: OffsetDateTime,
    ) -> Result<(Reserve, Option<(Arc<dyn SpendBackend>, String)>), String> {
        let (backend, deny) = match (self.backend.get(), &self.redis) {
            (Some(pg), _) => (Some(pg), false),
            (None, Some(r)) => (Some(&r.backend), r.deny),
            (None, None) => (None, false),
        };
        if let Some(backend) = backend {
            let id = format!("{:016x}", rand::random::<u64>());
            match backend.reserve(&id, org, charges, cost, now).await {
                Ok(r) => return Ok((r, Some((backend.clone(), id)))),
                Err(e) if deny => return Err(e),
                Err(e) => {
                    if let Some(r) = &self.redis {
                        r.errors.0.inc();
                    }
                    if self.should_warn(now) {
                        tracing::warn!(error = %e, "budgets: the shared backend failed; reserving locally");
                    }
                }
            }
        }
        Ok((self.ledger.reserve(charges, cost, now.date()), None))
    }

    /// At most one warning every 10 seconds: a dead backend must not log every request.
    fn should_warn(&self, now: OffsetDateTime) -> bool {
        let (t, last) = (now.unix_timestamp(), self.warned_at.load(Ordering::Relaxed));
        t - last >= 10
            && self
                .warned_at
                .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Replaces the reservation by the real cost and records the request's usage row.
    pub async fn on_log(&self, ex: &Exchange, cx: &Cx) {
        let reservation = cx.extensions.get::<SpendReservation>();
        let reserved = reservation.map_or(0, |r| r.micros);
        let ok = (200..300).contains(&ex.status);
        let priced_call = cx.extensions.get::<CallPrice>().is_some();
        let charged = match cx.extensions.get::<Cost>() {
            // A priced call without tokens (MCP) is costed by `price_request` when it is paid.
            Some(c) if cx.usage.is_some() || priced_call => {
                i64::try_from(c.micros).unwrap_or(i64::MAX)
            }
            _ if priced_call => 0,
            // An asynchronous agent run: its execution reserves and pays for itself.
            _ if ex.status == 202 && cx.route == Route::AgentRun => 0,
            // Answered without a usage (a stream cut after it started, an upstream that does
            // not report it): the reservation is the best bound there is.
            _ if ok => reserved,
            _ => 0,
        };
        let model = cx
            .model
            .as_deref()
            .or_else(|| cx.extensions.get::<CallPrice>().map(|p| &*p.label));
        let row = match (&cx.identity, model) {
            // Not a model call (token counting): it costs nothing and is no request of usage.
            _ if cx.route.api_route().is_some_and(|r| !r.usage_row) => None,
            (Some(id), Some(model)) if ok || cx.usage.is_some() => Some(RowKey {
                date: OffsetDateTime::now_utc().date(),
                org: id.org.clone(),
                user: id.user.clone(),
                key: id.key_id.clone(),
                model: Arc::from(model),
            }),
            _ => None,
        };
        let usage = cx.usage.unwrap_or_default();
        let sums = RowSums {
            requests: 1,
            prompt_tokens: i64::try_from(usage.prompt_tokens).unwrap_or(i64::MAX),
            completion_tokens: i64::try_from(usage.completion_tokens).unwrap_or(i64::MAX),
            cost_micros: charged,
        };
        let row = row.map(|r| (r, sums));
        if let Some(s) = reservation.and_then(|r| r.shared.as_ref()) {
            match s
                .backend
                .settle(&s.id, &s.org, &s.charges, row.clone())
                .await
            {
                Ok(()) if s.backend.keeps_rows() => {}
                // Redis holds the budgets' totals; the row goes to this instance's store.
                Ok(()) => self.ledger.settle(&[], 0, row),
                Err(e) => {
                    // The reservation expires in the backend; the row is written behind.
                    if let Some(r) = self
                        .redis
                        .as_ref()
                        .filter(|r| Arc::ptr_eq(&r.backend, &s.backend))
                    {
                        r.errors.1.inc();
                    }
                    if self.should_warn(OffsetDateTime::now_utc()) {
                        tracing::warn!(error = %e, "budgets: the shared backend failed to settle");
                    }
                    self.ledger.settle(&[], 0, row);
                }
            }
            return;
        }
        let accounts = reservation.map_or(&[][..], |r| &r.accounts[..]);
        self.ledger.settle(accounts, reserved, row);
    }
}

fn set_remaining(cx: &mut Cx, micros: i64) {
    if let Ok(v) = http::HeaderValue::from_str(&usd_string(micros.max(0))) {
        cx.set_response_header(
            http::HeaderName::from_static("x-sluice-budget-remaining-usd"),
            v,
        );
    }
}

/// `429 budget_exceeded`, naming the level and the reset, with `Retry-After` until it.
fn refusal(c: &Charge, s: &Standing, cost: i64, now: OffsetDateTime) -> Reply {
    let resets = c.budget.period.resets_at(now);
    let when = match resets.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }) {
        Some(t) => format!("The budget resets at {t}."),
        None => "This budget is for all time and does not reset: ask an administrator to raise it."
            .to_string(),
    };
    let period = match c.budget.period {
        Period::Total => "in total".to_string(),
        p => format!("{} (UTC)", p.as_str()),
    };
    let msg = format!(
        "Budget exceeded: the {} `{}` may spend ${} {period}; ${} is spent and ${} reserved by \
         requests in flight, and this request may cost up to ${}. {when}",
        c.level.label(),
        c.name,
        usd_string(s.limit),
        usd_string(s.spent),
        usd_string(s.reserved),
        usd_string(cost),
    );
    let reply = Reply::error(429, "budget_exceeded", msg);
    match resets {
        Some(t) => {
            let secs = (t - now).whole_seconds().max(1);
            reply.with_header("retry-after", secs.to_string())
        }
        None => reply,
    }
}

/// The spend metrics the engine moves when it prices a request.
#[derive(Clone)]
pub struct SpendMetrics {
    pub spend_usd: CounterVec,
    pub unpriced: IntCounterVec,
}

impl SpendMetrics {
    /// Registers them once (later calls get the same families) and creates the series of every
    /// configured org × model and every unpriced model at zero.
    pub fn register(
        shared: &Shared,
        orgs: &[&str],
        prices: &HashMap<String, Price>,
        models: &[String],
    ) -> prometheus::Result<SpendMetrics> {
        let spend_usd = shared.metric("sluice_spend_usd_total", || {
            CounterVec::new(
                Opts::new(
                    "sluice_spend_usd_total",
                    "What requests cost at their model's price, in US dollars, by org and model.",
                ),
                &["org", "model"],
            )
        })?;
        let unpriced = shared.metric("sluice_unpriced_requests_total", || {
            IntCounterVec::new(
                Opts::new(
                    "sluice_unpriced_requests_total",
                    "Requests with usage to a model without a price (they cost 0), by model.",
                ),
                &["model"],
            )
        })?;
        for m in models {
            for o in orgs {
                spend_usd.with_label_values(&[o, m]);
            }
            if !prices.contains_key(m) {
                unpriced.with_label_values(&[m]);
            }
        }
        Ok(SpendMetrics {
            spend_usd: (*spend_usd).clone(),
            unpriced: (*unpriced).clone(),
        })
    }

    /// Prices a finished request from its usage: sets [`Cost`] in `cx` and moves the metrics.
    /// A priced call without tokens ([`CallPrice`], an MCP `tools/call`) costs its price when
    /// it was paid: the server was reached and the answer is a 2xx; its metric's `model` is the
    /// call's label (`mcp:<server>`), as in the usage rows. Else nothing happens without a
    /// usage or a model.
    ///
    /// Called when the answer completes (the audit record may be written then) and again at
    /// the log; the first call that prices the request wins, so nothing is counted twice.
    pub fn price_request(&self, prices: &HashMap<String, Price>, ex: &Exchange, cx: &mut Cx) {
        if cx.extensions.get::<Cost>().is_some() {
            return;
        }
        if let (Some(p), None) = (cx.extensions.get::<CallPrice>(), cx.usage) {
            if (200..300).contains(&ex.status) && ex.upstream_latency.is_some() {
                let org = cx.identity.as_ref().map_or("", |i| &*i.org);
                let micros = u64::try_from(p.micros).unwrap_or(0);
                self.spend_usd
                    .with_label_values(&[org, &p.label])
                    .inc_by(micros as f64 / 1e6);
                cx.extensions.insert(Cost {
                    micros,
                    priced: true,
                });
            }
            return;
        }
        let (Some(usage), Some(model)) = (cx.usage, cx.model.as_deref()) else {
            return;
        };
        let cost = match prices.get(model) {
            Some(p) => {
                let micros = p.cost_of(&usage);
                let org = cx.identity.as_ref().map_or("", |i| &*i.org);
                self.spend_usd
                    .with_label_values(&[org, model])
                    .inc_by(micros as f64 / 1e6);
                Cost {
                    micros,
                    priced: true,
                }
            }
            None => {
                self.unpriced.with_label_values(&[model]).inc();
                Cost {
                    micros: 0,
                    priced: false,
                }
            }
        };
        cx.extensions.insert(cost);
    }
}
