//! `backend = "redis"`: buckets in Redis, shared by every Sluice instance that uses it.
//!
//! One admission is one `EVALSHA` of `admit.lua`, which reads Redis's clock, checks every bucket
//! of the request and charges them only if all fit. Redis runs a script atomically, so
//! concurrent requests on any number of instances see one consistent set of buckets.
//!
//! ## Keys
//!
//! `<prefix>:{<org>}:org`, `<prefix>:{<org>}:user:<user>`, `<prefix>:{<org>}:key:<key id>`.
//! A script may only touch keys of one Redis Cluster slot, so every key of a request carries the
//! same hash tag: the caller's org (a user belongs to one org, a key to one user). Names are
//! percent-escaped (`%`, `{`, `}`, `:`), so no name can end a tag early or collide with another
//! level's key. Consequences: one org's traffic lands on one slot (its org bucket is the hot key
//! anyway), and a user moved to another org starts with fresh buckets. Each hash expires once its
//! buckets have refilled completely, so idle callers cost no memory.
//!
//! ## Connection
//!
//! Building never contacts Redis (`sluice check` and startup work while it is down). The first
//! request starts a connection in the background and waits for it at most `redis_timeout_ms`.
//! Once connected, `redis`'s `ConnectionManager` reconnects by itself after Redis restarts.
//! A circuit breaker ([`RedisConn`]) keeps a dead Redis from slowing requests down: after a
//! failure they get the `on_backend_error` decision at once, and one request every
//! [`PROBE_AFTER`] checks whether Redis is back.
//!
//! A call that times out may still have been applied by Redis (the charge counts, the request
//! was answered per `on_backend_error`): timeouts err on the side of counting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, OnceCell};

use super::bucket::{view_from_parts, BucketView, Decision, Kind, Level, Plan};

static ADMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("admit.lua")));

/// How long Redis is left alone after a failure before one request probes it again.
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(500);

/// Why the store could not answer.
#[derive(Debug)]
pub(crate) enum BackendError {
    /// No connection yet, or Redis failed recently and is not being asked until the next probe.
    Unavailable,
    Timeout,
    Redis(redis::RedisError),
    /// The script answered something it never answers.
    Protocol,
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Unavailable => f.write_str("Redis is unavailable"),
            BackendError::Timeout => f.write_str("Redis did not answer in time"),
            // The redis crate's errors name the failure (I/O, auth, script), never the URL.
            BackendError::Redis(e) => write!(f, "Redis error: {e}"),
            BackendError::Protocol => f.write_str("unexpected answer from the rate-limit script"),
        }
    }
}

/// The connection to one Redis URL, kept in [`crate::Shared`] so reloads reuse it.
///
/// A small circuit breaker sits in front of it: after a failure, requests are answered per
/// `on_backend_error` at once, without waiting for Redis, until [`PROBE_AFTER`] has passed; then
/// one request at a time probes Redis, and the first success closes the breaker. Without it a
/// dead Redis would add `redis_timeout_ms` to every request.
pub(crate) struct RedisConn {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
    connecting: AtomicBool,
    /// Wakes the requests waiting for a connection attempt to end.
    attempt_done: Notify,
    origin: Instant,
    /// Milliseconds since `origin` until which the breaker is open; 0 when closed.
    open_until_ms: AtomicU64,
    /// Whether a probe is in flight while the breaker is open.
    probing: AtomicBool,
    /// For throttling warnings: seconds since `origin` of the last one.
    last_warning_s: AtomicU64,
}

/// A request's passage through the breaker. Dropping it unfinished (the request was cancelled)
/// still frees the probe slot, so a cancelled probe cannot keep the breaker open forever.
pub(crate) struct Pass<'a> {
    conn: &'a RedisConn,
    probe: bool,
}

impl Pass<'_> {
    fn finish(self, ok: bool) {
        let conn = self.conn;
        if ok {
            if conn.open_until_ms.load(Ordering::Relaxed) != 0 {
                conn.open_until_ms.store(0, Ordering::Release);
            }
        } else {
            let until = conn
                .elapsed_ms()
                .saturating_add(u64::try_from(PROBE_AFTER.as_millis()).unwrap_or(u64::MAX))
                // 0 means closed.
                .max(1);
            conn.open_until_ms.store(until, Ordering::Release);
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.conn.probing.store(false, Ordering::Release);
        }
    }
}

impl RedisConn {
    /// Parses the URL; does not connect.
    /// A connection (made on first use) through `client`, which `[rate_limit]` built.
    pub(crate) fn new(client: redis::Client) -> RedisConn {
        RedisConn {
            client,
            manager: OnceCell::new(),
            connecting: AtomicBool::new(false),
            attempt_done: Notify::new(),
            origin: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            last_warning_s: AtomicU64::new(u64::MAX),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a warning about Redis may be logged now: at most one every 10 seconds, so a dead
    /// Redis does not turn every request into a log line.
    pub(crate) fn should_warn(&self) -> bool {
        let now = self.origin.elapsed().as_secs();
        let last = self.last_warning_s.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < 10 {
            return false;
        }
        self.last_warning_s
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Lets a request through to Redis, unless the breaker is open (and this is not the probe).
    fn enter(&self) -> Result<Pass<'_>, BackendError> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Pass {
                conn: self,
                probe: false,
            });
        }
        if self.elapsed_ms() < until || self.probing.swap(true, Ordering::AcqRel) {
            return Err(BackendError::Unavailable);
        }
        Ok(Pass {
            conn: self,
            probe: true,
        })
    }

    /// The connection, or a new attempt waited for until `deadline`.
    async fn connection(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        connect_timeout: Duration,
    ) -> Result<ConnectionManager, BackendError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let done = self.attempt_done.notified();
        tokio::pin!(done);
        // Register before looking again, so an attempt that ends in between still wakes us.
        done.as_mut().enable();
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        self.start_connecting(connect_timeout);
        let _ = tokio::time::timeout_at(deadline, done).await;
        self.manager.get().cloned().ok_or(BackendError::Unavailable)
    }

    /// Starts a background connection attempt unless one is running. It runs in the background
    /// so that a Redis slower to connect than `redis_timeout_ms` still ends up connected.
    fn start_connecting(self: &Arc<Self>, connect_timeout: Duration) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(connect_timeout)
                // After a drop the manager retries with a jittered backoff capped at one second,
                // a few times; the next command after that starts a new round. Redis coming back
                // is noticed within about a second.
                .set_number_of_retries(4)
                .set_factor(50)
                .set_max_delay(1000);
            let attempt = tokio::time::timeout(
                connect_timeout,
                ConnectionManager::new_with_config(this.client.clone(), config),
            )
            .await;
            match attempt {
                Ok(Ok(m)) => {
                    let _ = this.manager.set(m);
                }
                Ok(Err(e)) => {
                    if this.should_warn() {
                        tracing::warn!(error = %e, "rate_limit: cannot connect to Redis");
                    }
                }
                Err(_) => {
                    if this.should_warn() {
                        tracing::warn!("rate_limit: connecting to Redis timed out");
                    }
                }
            }
            this.connecting.store(false, Ordering::Release);
            this.attempt_done.notify_waiters();
        });
    }
}

/// The Redis store as one filter instance uses it.
pub(crate) struct RedisStore {
    pub conn: Arc<RedisConn>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl RedisStore {
    pub(crate) async fn admit(&self, plan: &Plan) -> Result<Decision, BackendError> {
        self.decide("admit", plan).await
    }

    /// What [`RedisStore::admit`] would decide, without charging.
    pub(crate) async fn peek(&self, plan: &Plan) -> Result<Decision, BackendError> {
        self.decide("peek", plan).await
    }

    async fn decide(&self, mode: &str, plan: &Plan) -> Result<Decision, BackendError> {
        let out = self
            .run(mode, plan, |item| {
                let limits = &item.entity.limits;
                [
                    limits
                        .requests
                        .filter(|_| item.requests > 0)
                        .map(|s| (s, saturating_i64(item.requests))),
                    limits
                        .tokens
                        .filter(|_| item.tokens > 0)
                        .map(|s| (s, saturating_i64(item.tokens))),
                ]
            })
            .await?;
        parse_decision(plan, &out)
    }

    /// Adds `delta` tokens (negative: a refund) to the token buckets of `plan`.
    pub(crate) async fn adjust_tokens(&self, plan: &Plan, delta: i64) -> Result<(), BackendError> {
        self.run("adjust", plan, |item| {
            let limits = &item.entity.limits;
            [
                None,
                limits
                    .tokens
                    .filter(|_| item.tokens > 0)
                    .map(|s| (s, delta)),
            ]
        })
        .await
        .map(|_| ())
    }

    async fn run(
        &self,
        mode: &str,
        plan: &Plan,
        charges: impl Fn(&super::bucket::PlanItem) -> [Option<(super::bucket::BucketSpec, i64)>; 2],
    ) -> Result<Vec<i64>, BackendError> {
        let mut call = ADMIT.prepare_invoke();
        call.arg(mode);
        for item in &plan.items {
            call.key(item.entity.redis_key.as_str());
            for c in charges(item) {
                match c {
                    Some((spec, cost)) => call.arg(spec.capacity).arg(spec.per_minute).arg(cost),
                    None => call.arg(0).arg(0).arg(0),
                };
            }
        }
        self.invoke(&call).await
    }

    /// Runs a script through the breaker, waiting for Redis at most `redis_timeout_ms`
    /// (the budgets' script too, `redis_budgets.rs`).
    pub(super) async fn invoke(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<i64>, BackendError> {
        let pass = self.conn.enter()?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = match self.conn.connection(deadline, self.connect_timeout).await {
            Ok(mut conn) => {
                match tokio::time::timeout_at(deadline, call.invoke_async::<Vec<i64>>(&mut conn))
                    .await
                {
                    Ok(Ok(out)) => Ok(out),
                    Ok(Err(e)) => Err(BackendError::Redis(e)),
                    Err(_) => Err(BackendError::Timeout),
                }
            }
            Err(e) => Err(e),
        };
        pass.finish(result.is_ok());
        result
    }
}

/// Reads the script's answer. A peek never charged anything, so a "fits" answer to a peek is
/// reported as `Admitted` with uncharged buckets.
fn parse_decision(plan: &Plan, out: &[i64]) -> Result<Decision, BackendError> {
    let [admitted, limiting, limiting_kind, wait_us, rest @ ..] = out else {
        return Err(BackendError::Protocol);
    };
    let mut views: Vec<BucketView> = Vec::with_capacity(rest.len() / 2);
    let mut pairs = rest.chunks_exact(2);
    let mut limited_at: Option<(Level, Kind)> = None;
    for (i, item) in plan.items.iter().enumerate() {
        for (kind, spec, _) in item.charges() {
            let [level, reset_us] = pairs.next().ok_or(BackendError::Protocol)? else {
                return Err(BackendError::Protocol);
            };
            views.push(view_from_parts(
                &item.entity,
                kind,
                spec,
                *level,
                micros(*reset_us),
            ));
        }
        if usize::try_from(*limiting).ok() == Some(i + 1) {
            let kind = match limiting_kind {
                1 => Kind::Requests,
                2 => Kind::Tokens,
                _ => return Err(BackendError::Protocol),
            };
            limited_at = Some((item.entity.level, kind));
        }
    }
    match (*admitted, limited_at) {
        (1, None) => Ok(Decision::Admitted(views)),
        (0, Some((level, kind))) => Ok(Decision::Limited {
            level,
            kind,
            wait: micros(*wait_us),
            buckets: views,
        }),
        _ => Err(BackendError::Protocol),
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The Redis key of one org, user or key (see the module docs).
pub(crate) fn key(prefix: &str, org: &str, level: Level, name: &str) -> String {
    let org = escape(org);
    match level {
        Level::Org => format!("{prefix}:{{{org}}}:org"),
        Level::User => format!("{prefix}:{{{org}}}:user:{}", escape(name)),
        Level::Key => format!("{prefix}:{{{org}}}:key:{}", escape(name)),
    }
}

pub(super) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' | '{' | '}' | ':' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_fails_fast_then_lets_one_probe_through() {
        let mut conn = RedisConn::new(redis::Client::open("redis://127.0.0.1:1").unwrap());
        // Pretend the process has been up for a while, so that "open until 1 ms" has passed.
        conn.origin = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .unwrap_or(conn.origin);
        let pass = conn.enter().expect("closed at first");
        assert!(!pass.probe);
        pass.finish(false);
        // Open: answered at once, nobody waits for Redis.
        assert!(matches!(conn.enter(), Err(BackendError::Unavailable)));
        // Once the pause is over, exactly one request probes.
        conn.open_until_ms.store(1, Ordering::Release);
        let probe = conn.enter().expect("the probe");
        assert!(probe.probe);
        assert!(conn.enter().is_err());
        // A cancelled probe frees the slot.
        drop(probe);
        let probe = conn.enter().expect("a new probe");
        probe.finish(true);
        let pass = conn.enter().expect("closed again");
        assert!(!pass.probe);
    }

    #[test]
    fn keys_share_the_org_tag_and_cannot_collide() {
        assert_eq!(
            key("sluice:rl", "acme", Level::Org, "acme"),
            "sluice:rl:{acme}:org"
        );
        assert_eq!(
            key("sluice:rl", "acme", Level::User, "alice"),
            "sluice:rl:{acme}:user:alice"
        );
        assert_eq!(
            key("p", "a}:user:b", Level::Org, "a}:user:b"),
            "p:{a%7D%3Auser%3Ab}:org"
        );
        assert_ne!(
            key("p", "a", Level::User, "b:key:c"),
            key("p", "a", Level::Key, "c")
        );
    }
}
