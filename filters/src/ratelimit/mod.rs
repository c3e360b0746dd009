//! The `rate_limit` filter: request and token buckets per org, user and key.
//!
//! Each org, user and key may have a `rate_limit = { requests_per_minute, tokens_per_minute,
//! burst, token_burst }`. A request must fit every bucket of its caller's org, user and key;
//! either all of them are charged or none is (in-process: one lock per level, taken in a fixed
//! order; Redis: one script). Buckets refill continuously.
//!
//! ## Requests
//!
//! Every route is charged one request in each request bucket. A request is never given back,
//! whatever its outcome: a client that sends failing requests still sends requests, and
//! refunding them would let it hammer the gateway (and the upstream) without bound.
//!
//! An asynchronous agent run is one request: its acceptance (`202`) is charged the request and
//! releases its token reservation when it ends; the engine's background execution
//! ([`PreAuthenticated`]) is charged no request but reserves and reconciles the run's tokens.
//!
//! ## Tokens
//!
//! Only chat completions and agent runs consume tokens. Before the upstream is called, the
//! request reserves `estimated prompt + n × (max_tokens or default_max_tokens)` (the route's API
//! estimates the prompt, see `api/estimate.rs`; embeddings reserve the prompt only, token
//! counting nothing) in every token bucket, so the request that would cross the
//! limit is refused and concurrent requests cannot all slip through. A reservation larger than
//! a bucket's capacity can never fit and is refused at once with a 429 that says so
//! (`Retry-After: 60`, since any retry is refused just the same).
//!
//! After the exchange (`on_log`) the reservation is reconciled with the upstream's `usage`
//! (`cx.usage`, from the body or the stream's usage chunk):
//! - usage known: the buckets are charged exactly the usage (unused tokens come back, extra ones
//!   are charged, possibly into debt that later requests wait out);
//! - no usage but a 2xx went out (an upstream that ignores `include_usage`, a stream cut after
//!   it started, an async agent run): the reservation stands;
//! - no usage and no 2xx (an error from the upstream or a later filter, no response): the
//!   reservation is released.
//!
//! A reconciliation the store cannot apply (Redis down) is counted and dropped: the reservation
//! stands as charged.
//!
//! ## Answers
//!
//! Refused: `429 rate_limit_exceeded` with `Retry-After` (whole seconds, rounded up, ≥ 1) =
//! the time until every bucket holds the request's cost, computed from the buckets' state.
//! Every request with a bucket gets OpenAI's `x-ratelimit-{limit,remaining,reset}-requests` for
//! its tightest request bucket, and the `-tokens` trio when a token bucket applies (see
//! [`set_headers`]). A caller with no bucket at all gets no such headers: there is nothing to
//! describe.
//!
//! When the store fails (Redis down or slow beyond `redis_timeout_ms`): `on_backend_error =
//! "allow"` decides on this instance's own buckets at the same limits (`fallback.rs`); `"deny"` answers
//! `503 rate_limit_unavailable` (type `server_error`, `Retry-After: 1`): the contract has no code
//! for it, and 429 would blame the caller for the gateway's problem. Either way
//! `sluice_rate_limit_backend_errors_total` counts it; warnings are logged at most every 10 s.
//!
//! ## Metrics
//!
//! `sluice_rate_limited_total{level}` (the level whose bucket needed the longest to fit),
//! `sluice_rate_limit_backend_errors_total{op}` (`check`, `reconcile`),
//! `sluice_rate_limit_check_duration_seconds{backend}`,
//! `sluice_rate_limit_reconciled_tokens_total{direction}` (`charged`, `returned`).

mod bucket;
mod fallback;
mod local;
mod redis_budgets;
mod redis_store;
mod refusal;
mod report;
mod settings;

// foldhash: the keys are the config's own names, looked up several times per request.
use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use self::bucket::{BucketView, Decision, Entity, Kind, Level, Limits, Plan, PlanItem};
use self::local::LocalStore;
use self::redis_store::{BackendError, RedisConn, RedisStore};
use self::refusal::{limited_message, never_fits, retry_after_secs, NEVER_FITS_RETRY_AFTER_SECS};
#[cfg(test)]
use self::report::openai_duration;
use self::report::{set_headers, Metrics};
pub use self::settings::{Backend, OnBackendError, RateLimit, RateLimitSettings};
use crate::api::TokenCost;
use crate::auth::{Derived, RuntimeKeys};
use crate::config::ConfigErrors;
use crate::policy::{Policy, RateLimitSpec};
use crate::spend::SpendGate;
use crate::{
    Cx, Exchange, Filter, Identity, JsonBody, PreAuthenticated, Reply, Request, Route, Shared,
    Verdict,
};

/// Builds the `rate_limit` filter for `[[filters]] type = "rate_limit"`.
///
/// Takes no options of its own (its settings are `[rate_limit]` and the `rate_limit` of each
/// org, user and key), built once per load ([`RateLimit`]). Never contacts Redis: the
/// connection is made by the first request that needs it.
pub fn build(
    policy: &Policy<'_>,
    options: &toml::Table,
    path: &str,
    shared: &Shared,
) -> Result<Arc<dyn Filter>, ConfigErrors> {
    let errs = crate::config::no_options(
        options,
        path,
        "unknown option: rate_limit takes no options here; configure it in [rate_limit] \
         and in the `rate_limit` of [[orgs]], [[users]] and [[keys]]",
    );
    let built = crate::config::together(errs, policy.sections.built::<RateLimitSettings>(path))?;
    let settings = &built.settings;
    let store = match &built.redis {
        None => Store::Local(
            shared
                .get_or_try_init("ratelimit:local", || {
                    Ok::<_, std::convert::Infallible>(LocalStore::new())
                })
                .unwrap_or_else(|never| match never {}),
        ),
        Some(client) => {
            // The Shared key is the URL's hash, not the URL (which may hold a password).
            let url = settings.redis_url.as_deref().unwrap_or_default();
            let id = hex::encode(Sha256::digest(url.as_bytes()));
            let conn = shared.get_or_try_init(&format!("ratelimit:redis:{id}"), || {
                Ok::<_, std::convert::Infallible>(RedisConn::new(client.clone()))
            });
            let conn = conn.unwrap_or_else(|never| match never {});
            Store::Redis(RedisStore {
                conn,
                timeout: Duration::from_millis(settings.redis_timeout_ms),
                connect_timeout: Duration::from_millis(settings.redis_connect_timeout_ms),
            })
        }
    };

    let prefix = settings.redis_key_prefix.as_str();
    let user_org: HashMap<&str, &str> = policy
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.org.as_str()))
        .collect();
    let mut orgs = HashMap::default();
    for o in policy.orgs {
        if let Some(e) = entity(Level::Org, &o.name, &o.name, o.rate_limit.as_ref(), prefix) {
            orgs.insert(Arc::clone(&e.name), e);
        }
    }
    let mut users = HashMap::default();
    for u in policy.users {
        if let Some(e) = entity(Level::User, &u.name, &u.org, u.rate_limit.as_ref(), prefix) {
            users.insert(Arc::clone(&e.name), e);
        }
    }
    let mut keys = HashMap::default();
    // Store keys (made through the key API) have ids no config key has.
    for k in policy.keys {
        let org = user_org.get(k.user.as_str()).copied().unwrap_or_default();
        if let Some(e) = entity(Level::Key, &k.id, org, k.rate_limit.as_ref(), prefix) {
            keys.insert(Arc::clone(&e.name), e);
        }
    }
    let metrics = Metrics::register(shared).map_err(|e| {
        ConfigErrors::one(path, format!("cannot register the rate_limit metrics: {e}"))
    })?;

    // Budgets shared through the same Redis (SPEC §15).
    let redis_budgets = match &store {
        Store::Redis(r) => Some(redis_budgets::backend(
            r, prefix, shared, settings, &metrics,
        )),
        Store::Local(_) => None,
    };
    let spend = SpendGate::build(policy, shared, redis_budgets)?;
    let user_org = user_org
        .into_iter()
        .map(|(u, o)| (u.to_string(), o.to_string()))
        .collect();
    Ok(Arc::new(RateLimitFilter {
        orgs,
        users,
        keys,
        store_keys: StoreKeyEntities {
            runtime: RuntimeKeys::in_shared(shared),
            user_org,
            prefix: prefix.to_string(),
            derived: Derived::default(),
        },
        store,
        default_max_tokens: settings.default_max_tokens,
        on_backend_error: settings.on_backend_error,
        fallback: (settings.backend == Backend::Redis
            && settings.on_backend_error == OnBackendError::Allow)
            .then(|| fallback::local_buckets(shared)),
        metrics,
        spend,
    }))
}

fn entity(
    level: Level,
    name: &str,
    org: &str,
    spec: Option<&RateLimitSpec>,
    prefix: &str,
) -> Option<Arc<Entity>> {
    let limits = Limits::from_spec(spec?);
    if limits.is_empty() {
        return None;
    }
    Some(Arc::new(Entity {
        level,
        name: Arc::from(name),
        limits,
        redis_key: redis_store::key(prefix, org, level, name),
    }))
}

/// The `rate_limit` filter. Built by [`build`].
pub struct RateLimitFilter {
    orgs: HashMap<Arc<str>, Arc<Entity>>,
    users: HashMap<Arc<str>, Arc<Entity>>,
    keys: HashMap<Arc<str>, Arc<Entity>>,
    store_keys: StoreKeyEntities,
    store: Store,
    default_max_tokens: u64,
    on_backend_error: OnBackendError,
    /// Redis with `on_backend_error = "allow"`: this instance's own buckets (`fallback.rs`).
    fallback: Option<Arc<LocalStore>>,
    metrics: Arc<Metrics>,
    /// Budgets (SPEC §15): reserved and reconciled like the token buckets.
    spend: SpendGate,
}

/// The key-level buckets of the keys made at runtime ([`RuntimeKeys`]), derived from the table
/// in force and rebuilt when it changes.
struct StoreKeyEntities {
    runtime: Arc<RuntimeKeys>,
    /// user → org, for the Redis keys' hash tag.
    user_org: HashMap<String, String>,
    prefix: String,
    derived: Derived<HashMap<Arc<str>, Arc<Entity>>>,
}

impl StoreKeyEntities {
    fn get(&self, key_id: &str) -> Option<Arc<Entity>> {
        let table = self.runtime.table();
        if table.is_empty() {
            return None;
        }
        let view = self.derived.get(&table, |t| {
            t.iter()
                .filter_map(|k| {
                    let org = self.user_org.get(&k.user)?;
                    let e = entity(Level::Key, &k.id, org, k.rate_limit.as_ref(), &self.prefix)?;
                    Some((k.id.clone(), e))
                })
                .collect()
        });
        view.1.get(key_id).cloned()
    }
}

enum Store {
    Local(Arc<LocalStore>),
    Redis(RedisStore),
}

impl Store {
    fn label(&self) -> &'static str {
        match self {
            Store::Local(_) => "local",
            Store::Redis(_) => "redis",
        }
    }

    async fn admit(&self, plan: &Plan) -> Result<Decision, BackendError> {
        match self {
            Store::Local(s) => Ok(s.admit(plan)),
            Store::Redis(s) => s.admit(plan).await,
        }
    }

    /// What `admit` would decide, without charging anything.
    async fn peek(&self, plan: &Plan) -> Result<Decision, BackendError> {
        match self {
            Store::Local(s) => Ok(s.peek(plan)),
            Store::Redis(s) => s.peek(plan).await,
        }
    }

    async fn adjust_tokens(&self, plan: &Plan, delta: i64) -> Result<(), BackendError> {
        match self {
            Store::Local(s) => {
                s.adjust_tokens(plan, delta);
                Ok(())
            }
            Store::Redis(s) => s.adjust_tokens(plan, delta).await,
        }
    }

    fn should_warn(&self) -> bool {
        match self {
            Store::Local(_) => true,
            Store::Redis(s) => s.conn.should_warn(),
        }
    }
}

/// The tokens a request reserved, kept in [`Cx::extensions`] until [`Filter::on_log`]
/// reconciles them with the upstream's usage.
#[derive(Clone)]
struct Reservation {
    /// Only the levels whose token bucket was charged.
    plan: Plan,
    tokens: u64,
}

/// The tokens a request reserves: its API's prompt estimate plus, for APIs that generate,
/// `n ×` its output ceiling (or `default_max_tokens`).
fn reservation(body: &JsonBody, cx: &Cx, default_max_tokens: u64) -> u64 {
    let completion = cx
        .max_tokens
        .unwrap_or(default_max_tokens)
        .saturating_mul(cx.choices.max(1));
    match cx.api.token_cost() {
        TokenCost::Free => 0,
        TokenCost::PromptOnly => cx.api.prompt_tokens(body),
        TokenCost::Generation => cx.api.prompt_tokens(body).saturating_add(completion),
    }
}

impl RateLimitFilter {
    /// Every level of the caller that has a bucket this request touches, org → user → key →
    /// the keys it was made from (parent first), whose key-level buckets it is charged to
    /// too, so that minting keys never multiplies a limit. Locks are taken in this order; an
    /// ancestor always comes after its descendants, so two requests never wait on each other
    /// in a cycle.
    fn plan(&self, id: &Identity, counts_request: bool, tokens: u64) -> Plan {
        let mut items = Vec::with_capacity(3 + id.ancestors.len());
        let found = [
            self.orgs.get(&*id.org).cloned(),
            self.users.get(&*id.user).cloned(),
            self.key_entity(&id.key_id),
        ]
        .into_iter()
        .chain(id.ancestors.iter().map(|a| self.key_entity(a)));
        for entity in found.flatten() {
            let requests = u64::from(counts_request && entity.limits.requests.is_some());
            let tokens = if entity.limits.tokens.is_some() {
                tokens
            } else {
                0
            };
            if requests > 0 || tokens > 0 {
                items.push(PlanItem {
                    entity,
                    requests,
                    tokens,
                });
            }
        }
        Plan { items }
    }

    fn has_token_bucket(&self, id: &Identity) -> bool {
        let has = |map: &HashMap<Arc<str>, Arc<Entity>>, name: &Arc<str>| {
            map.get(&**name).is_some_and(|e| e.limits.tokens.is_some())
        };
        has(&self.orgs, &id.org)
            || has(&self.users, &id.user)
            || std::iter::once(&id.key_id)
                .chain(id.ancestors.iter())
                .any(|k| {
                    self.key_entity(k)
                        .is_some_and(|e| e.limits.tokens.is_some())
                })
    }

    /// The key-level buckets of a configured key, else of a store key.
    fn key_entity(&self, key_id: &str) -> Option<Arc<Entity>> {
        match self.keys.get(key_id) {
            Some(e) => Some(e.clone()),
            None => self.store_keys.get(key_id),
        }
    }

    /// Counts and (at most every 10 s) logs a store failure.
    fn note_backend_error(&self, op: &'static str, e: &dyn std::fmt::Display) {
        match op {
            "check" => self.metrics.backend_errors_check.inc(),
            _ => self.metrics.backend_errors_reconcile.inc(),
        }
        if self.store.should_warn() {
            tracing::warn!(
                backend = self.store.label(),
                op,
                error = %e,
                on_backend_error = ?self.on_backend_error,
                "rate_limit: backend unavailable"
            );
        }
    }

    /// The answer to a request whose admission check failed.
    fn on_check_error(&self, e: &dyn std::fmt::Display) -> Verdict {
        self.note_backend_error("check", e);
        match self.on_backend_error {
            OnBackendError::Allow => Verdict::Continue,
            OnBackendError::Deny => Verdict::Respond(
                Reply::error(
                    503,
                    "rate_limit_unavailable",
                    "The rate-limit service is unavailable, so this request cannot be \
                     admitted. Retry shortly.",
                )
                .with_header("retry-after", "1"),
            ),
        }
    }
}

#[async_trait]
impl Filter for RateLimitFilter {
    fn name(&self) -> &str {
        "rate_limit"
    }

    async fn on_request(&self, req: &mut Request<'_>, cx: &mut Cx) -> Verdict {
        if cx.route.reaches_model() {
            match self
                .spend
                .on_request(req.body, cx, self.default_max_tokens)
                .await
            {
                Ok(None) => {}
                Ok(Some(refused)) => return Verdict::Respond(refused),
                Err(e) => return self.on_check_error(&e),
            }
        }
        let Some(id) = cx.identity.as_ref() else {
            // No auth filter before us: nobody to limit.
            return Verdict::Continue;
        };
        let tokens = if cx.route.reaches_model() && self.has_token_bucket(id) {
            reservation(req.body, cx, self.default_max_tokens)
        } else {
            0
        };
        // The engine's own execution of an asynchronous agent run: its acceptance (the `202`)
        // already counted the request; the execution reserves and reconciles its tokens.
        let counts_request = cx.extensions.get::<PreAuthenticated>().is_none();
        let plan = self.plan(id, counts_request, tokens);
        if plan.items.is_empty() {
            return Verdict::Continue;
        }

        if let Some((level, msg)) = never_fits(&plan, req.body, cx, self.default_max_tokens) {
            self.metrics.limited(level).inc();
            // Show where the caller's buckets stand, without charging anything.
            if let Ok(d) = self.store.peek(&plan).await {
                set_headers(cx, d.buckets());
            }
            return Verdict::Respond(
                Reply::error(429, "rate_limit_exceeded", msg)
                    .with_header("retry-after", NEVER_FITS_RETRY_AFTER_SECS.to_string()),
            );
        }

        let started = Instant::now();
        let decision = self.admit(&plan).await;
        self.metrics
            .check_seconds(self.store.label(), started.elapsed());
        match decision {
            Ok(Decision::Admitted(views)) => {
                set_headers(cx, &views);
                if tokens > 0 {
                    let mut plan = plan;
                    plan.items.retain(|i| i.tokens > 0);
                    cx.extensions.insert(Reservation { plan, tokens });
                }
                Verdict::Continue
            }
            Ok(Decision::Limited {
                level,
                kind,
                wait,
                buckets,
            }) => {
                self.metrics.limited(level).inc();
                set_headers(cx, &buckets);
                let secs = retry_after_secs(wait);
                let msg = limited_message(level, kind, &buckets, tokens, secs);
                Verdict::Respond(
                    Reply::error(429, "rate_limit_exceeded", msg)
                        .with_header("retry-after", secs.to_string()),
                )
            }
            Err(e) => self.on_check_error(&e),
        }
    }

    async fn on_log(&self, ex: &Exchange, cx: &Cx) {
        self.spend.on_log(ex, cx).await;
        let Some(res) = cx.extensions.get::<Reservation>() else {
            return;
        };
        let delta: i64 = match cx.usage {
            // The upstream said what it used: charge exactly that.
            Some(u) => clamp_i64(u.total()) - clamp_i64(res.tokens),
            // An asynchronous agent run was accepted: its execution is a request of its own that
            // reserves its own tokens, so this reservation would charge them twice.
            None if ex.status == 202 && cx.route == Route::AgentRun => -clamp_i64(res.tokens),
            // A 2xx without usage (an upstream that ignores `include_usage`, a stream cut after
            // it started, an async agent run): the work was done or is under way, and the
            // reservation is the best bound there is. Keep it.
            None if (200..300).contains(&ex.status) => 0,
            // Failed before or at the upstream (error status, no response): nothing was
            // generated, release the reservation.
            None => -clamp_i64(res.tokens),
        };
        if delta == 0 {
            return;
        }
        match self.adjust(&res.plan, delta).await {
            Ok(()) => {
                if delta > 0 {
                    self.metrics.charged.inc_by(delta.unsigned_abs());
                } else {
                    self.metrics.returned.inc_by(delta.unsigned_abs());
                }
            }
            // The adjustment is lost and the reservation stands: the request is long answered.
            Err(e) => self.note_backend_error("reconcile", &e),
        }
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Section;

    #[test]
    fn durations_in_openai_format() {
        assert_eq!(openai_duration(Duration::ZERO), "0s");
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_micros(19_600)), "20ms");
        assert_eq!(openai_duration(Duration::from_micros(19_001)), "19ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(
            openai_duration(Duration::from_millis(3_723_500)),
            "1h2m3.5s"
        );
        assert_eq!(openai_duration(Duration::from_nanos(999_999_001)), "1s");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn settings_reject_bad_values_without_echoing_the_url() {
        let s: RateLimitSettings = toml::from_str(
            "backend = \"redis\"\nredis_url = \"redis://:hunter2@[::1\"\nredis_key_prefix = \"a{b\"\nredis_timeout_ms = 0",
        )
        .unwrap();
        let errs = s.build().err().unwrap_or_default().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rate_limit.redis_url",
                "rate_limit.redis_timeout_ms",
                "rate_limit.redis_key_prefix"
            ]
        );
        assert!(errs.iter().all(|e| !e.message.contains("hunter2")));
        let s: RateLimitSettings = toml::from_str("backend = \"redis\"").unwrap();
        let errs = s.build().err().unwrap_or_default().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "rate_limit.redis_url");
    }
}
