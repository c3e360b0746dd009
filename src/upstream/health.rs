//! What Sluice knows about one upstream's health: consecutive failures, ejection (passive), an
//! upstream's own `Retry-After`, the last active check, requests in flight.
//!
//! One [`TargetHealth`] per upstream *name*, kept by the [`super::Board`] across config
//! generations: a reload that keeps an upstream keeps what was learnt about it, and requests
//! still running on the old generation report to the same state.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::config::{RoutingConfig, MAX_EJECT_SECONDS};

/// The longest an upstream's `Retry-After` takes it out (a larger value is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// One upstream's health.
pub struct TargetHealth {
    name: String,
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Failed attempts in a row.
    failures: u32,
    last_failure: Option<&'static str>,
    /// Ejections in a row (each one twice as long as the last).
    ejections: u32,
    out: Option<Out>,
    /// The ejection is over and one request is trying the target again.
    trial_taken: bool,
    check: Option<CheckState>,
}

#[derive(Clone, Copy)]
struct Out {
    until: Instant,
    until_wall: SystemTime,
    why: OutWhy,
}

/// Why a target is out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutWhy {
    /// `failures` attempts in a row failed: out for `seconds`.
    Ejected { failures: u32, seconds: u64 },
    /// The upstream answered `status` with `Retry-After: seconds`.
    RetryAfter { status: u16, seconds: u64 },
}

struct CheckState {
    ok: bool,
    at: SystemTime,
    next: Instant,
    error: Option<String>,
}

/// Whether a target can take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    In,
    /// Its ejection is over: one request may try it (see [`TargetHealth::try_claim_trial`]).
    Trial,
    /// Out of service; back at `due` (or, for a failing check, when it is next checked).
    Out {
        due: Instant,
    },
}

/// What an attempt says about the target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// A failure of this kind (the attempt result's label).
    Failure(&'static str),
    /// Says nothing about the upstream (the client left, Sluice refused the answer).
    Neutral,
}

/// What the admin view and the in-service gauge show.
#[derive(Debug, Clone)]
pub struct HealthView {
    pub in_service: bool,
    /// `in_service`, `out`, or `awaiting_trial` (ejection over, the next request tries it).
    pub state: &'static str,
    pub out_until: Option<SystemTime>,
    /// `ejected`, `retry_after` or `health_check`.
    pub why: Option<&'static str>,
    pub detail: Option<String>,
    pub consecutive_failures: u32,
    pub last_failure: Option<&'static str>,
    pub ejections: u32,
    pub in_flight: usize,
    /// The last active check: when, whether it passed, why not.
    pub check: Option<(SystemTime, bool, Option<String>)>,
}

impl TargetHealth {
    pub fn new(name: &str) -> TargetHealth {
        TargetHealth {
            name: name.to_string(),
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn availability(&self, now: Instant) -> Avail {
        let s = self.lock();
        if let Some(c) = s.check.as_ref().filter(|c| !c.ok) {
            return Avail::Out { due: c.next };
        }
        match s.out {
            None => Avail::In,
            Some(o) if now < o.until => Avail::Out { due: o.until },
            Some(Out {
                why: OutWhy::Ejected { .. },
                ..
            }) if s.trial_taken => Avail::Out { due: now },
            Some(Out {
                why: OutWhy::Ejected { .. },
                ..
            }) => Avail::Trial,
            Some(_) => Avail::In,
        }
    }

    /// When the target is out only because it was ejected (its own failures), when that ends;
    /// `None` when it is in, or held out by an upstream's `Retry-After` or a failing check.
    pub fn ejected_until(&self) -> Option<Instant> {
        let s = self.lock();
        if s.check.as_ref().is_some_and(|c| !c.ok) {
            return None;
        }
        match s.out {
            Some(o) if matches!(o.why, OutWhy::Ejected { .. }) => Some(o.until),
            _ => None,
        }
    }

    /// Takes the one trial request of a target whose ejection is over; `false` if another
    /// request has it (or the target is not awaiting a trial).
    pub fn try_claim_trial(&self, now: Instant) -> bool {
        let mut s = self.lock();
        let awaiting =
            matches!(s.out, Some(o) if now >= o.until && matches!(o.why, OutWhy::Ejected { .. }));
        if awaiting && !s.trial_taken {
            s.trial_taken = true;
            return true;
        }
        false
    }

    /// A trial request ended without a verdict (the client left before it was answered).
    pub fn release_trial(&self) {
        self.lock().trial_taken = false;
    }

    /// Records one attempt's outcome. `trial`: it was the trial request after an ejection;
    /// `retry_after`: the upstream answered 429/503 with this `Retry-After`.
    pub fn record(
        &self,
        verdict: Verdict,
        trial: bool,
        retry_after: Option<(u16, Duration)>,
        routing: &RoutingConfig,
        now: Instant,
    ) {
        let mut s = self.lock();
        if trial {
            s.trial_taken = false;
        }
        match verdict {
            Verdict::Success => {
                s.failures = 0;
                s.ejections = 0;
                s.last_failure = None;
                if matches!(s.out, Some(o) if matches!(o.why, OutWhy::Ejected { .. })) {
                    s.out = None;
                    tracing::info!(upstream = %self.name, "upstream back in service");
                }
            }
            Verdict::Failure(kind) => {
                s.failures = s.failures.saturating_add(1);
                s.last_failure = Some(kind);
                let ejected_now = matches!(s.out, Some(o) if now < o.until && matches!(o.why, OutWhy::Ejected { .. }));
                let threshold = routing.eject_after > 0 && s.failures >= routing.eject_after;
                if !ejected_now && (trial || threshold) {
                    let factor = 1u64 << s.ejections.min(16);
                    let seconds = routing
                        .eject_seconds
                        .saturating_mul(factor)
                        .min(MAX_EJECT_SECONDS);
                    s.ejections = s.ejections.saturating_add(1);
                    let why = OutWhy::Ejected {
                        failures: s.failures,
                        seconds,
                    };
                    tracing::warn!(upstream = %self.name, failures = s.failures, last = kind, seconds, "upstream ejected");
                    set_out(&mut s, now, Duration::from_secs(seconds), why);
                }
            }
            Verdict::Neutral => {}
        }
        if let Some((status, d)) = retry_after.filter(|(_, d)| !d.is_zero()) {
            let d = d.min(MAX_RETRY_AFTER);
            let why = OutWhy::RetryAfter {
                status,
                seconds: d.as_secs(),
            };
            set_out(&mut s, now, d, why);
        }
    }

    /// Records an active check's result; the next one runs `interval` from now. A passing check
    /// after an ejection has run out serves as its trial.
    pub fn record_check(&self, result: Result<(), String>, interval: Duration) {
        let now = Instant::now();
        let mut s = self.lock();
        let ok = result.is_ok();
        if ok
            && matches!(s.out, Some(o) if now >= o.until && matches!(o.why, OutWhy::Ejected { .. }))
        {
            s.out = None;
            s.failures = 0;
            s.ejections = 0;
        }
        let was_ok = s.check.as_ref().is_none_or(|c| c.ok);
        if was_ok != ok {
            match &result {
                Ok(()) => tracing::info!(upstream = %self.name, "health check passes again"),
                Err(e) => tracing::warn!(upstream = %self.name, error = %e, "health check fails"),
            }
        }
        s.check = Some(CheckState {
            ok,
            at: SystemTime::now(),
            next: now + interval,
            error: result.err(),
        });
    }

    /// Forgets the active check (the upstream no longer has one).
    pub fn clear_check(&self) {
        self.lock().check = None;
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn view(&self, now: Instant) -> HealthView {
        let avail = self.availability(now);
        let s = self.lock();
        let failing_check = s.check.as_ref().filter(|c| !c.ok);
        let (why, detail, out_until) = match (failing_check, s.out) {
            (Some(c), _) => (
                Some("health_check"),
                Some(format!(
                    "health check failed: {}",
                    c.error.as_deref().unwrap_or("not 2xx")
                )),
                None,
            ),
            (None, Some(o)) if !matches!(avail, Avail::In) => {
                let (why, detail) = match o.why {
                    OutWhy::Ejected { failures, seconds } => (
                        "ejected",
                        format!(
                            "{failures} failed attempts in a row (last: {}): out for {seconds} s",
                            s.last_failure.unwrap_or("?")
                        ),
                    ),
                    OutWhy::RetryAfter { status, seconds } => (
                        "retry_after",
                        format!("answered {status} with Retry-After: {seconds}"),
                    ),
                };
                (Some(why), Some(detail), Some(o.until_wall))
            }
            _ => (None, None, None),
        };
        HealthView {
            in_service: avail == Avail::In,
            state: match avail {
                Avail::In => "in_service",
                Avail::Trial => "awaiting_trial",
                Avail::Out { .. } => "out",
            },
            out_until,
            why,
            detail,
            consecutive_failures: s.failures,
            last_failure: s.last_failure,
            ejections: s.ejections,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            check: s.check.as_ref().map(|c| (c.at, c.ok, c.error.clone())),
        }
    }
}

/// Takes the target out until `now + d`, unless it is already out for longer.
fn set_out(s: &mut State, now: Instant, d: Duration, why: OutWhy) {
    let until = now + d;
    if s.out.is_some_and(|o| o.until >= until) {
        return;
    }
    s.out = Some(Out {
        until,
        until_wall: SystemTime::now() + d,
        why,
    });
    s.trial_taken = false;
}

/// One request in flight on an upstream (see [`TargetHealth::enter`]).
pub struct InFlight(Arc<TargetHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(eject_after: u32, eject_seconds: u64) -> RoutingConfig {
        RoutingConfig {
            eject_after,
            eject_seconds,
            ..RoutingConfig::default()
        }
    }

    #[test]
    fn ejection_doubles_up_to_the_cap_and_a_trial_restores() {
        let h = TargetHealth::new("a");
        let r = routing(2, 100);
        let t0 = Instant::now();
        h.record(Verdict::Failure("connect"), false, None, &r, t0);
        assert_eq!(h.availability(t0), Avail::In);
        h.record(Verdict::Failure("connect"), false, None, &r, t0);
        assert!(matches!(h.availability(t0), Avail::Out { .. }));
        let v = h.view(t0);
        assert_eq!((v.why, v.ejections), (Some("ejected"), 1));
        // Over: one trial, failed: out again for twice as long, then capped at 300 s.
        let t1 = t0 + Duration::from_secs(101);
        assert_eq!(h.availability(t1), Avail::Trial);
        assert!(h.try_claim_trial(t1));
        assert!(!h.try_claim_trial(t1), "one trial at a time");
        h.record(Verdict::Failure("5xx"), true, None, &r, t1);
        assert_eq!(
            h.availability(t1),
            Avail::Out {
                due: t1 + Duration::from_secs(200)
            }
        );
        let t2 = t1 + Duration::from_secs(201);
        assert!(h.try_claim_trial(t2));
        h.record(Verdict::Failure("5xx"), true, None, &r, t2);
        assert_eq!(
            h.availability(t2),
            Avail::Out {
                due: t2 + Duration::from_secs(300)
            }
        );
        let t3 = t2 + Duration::from_secs(301);
        assert!(h.try_claim_trial(t3));
        h.record(Verdict::Success, true, None, &r, t3);
        assert_eq!(h.availability(t3), Avail::In);
        assert_eq!(h.view(t3).consecutive_failures, 0);
    }

    #[test]
    fn retry_after_takes_a_target_out_and_success_does_not_cut_it_short() {
        let h = TargetHealth::new("a");
        let r = routing(0, 30);
        let t0 = Instant::now();
        let ra = Some((429, Duration::from_secs(7)));
        h.record(Verdict::Failure("429"), false, ra, &r, t0);
        assert_eq!(
            h.availability(t0),
            Avail::Out {
                due: t0 + Duration::from_secs(7)
            }
        );
        h.record(Verdict::Success, false, None, &r, t0);
        assert!(matches!(h.availability(t0), Avail::Out { .. }));
        assert_eq!(h.availability(t0 + Duration::from_secs(8)), Avail::In);
    }

    #[test]
    fn a_failing_check_takes_a_target_out_and_a_passing_one_serves_as_trial() {
        let h = TargetHealth::new("a");
        let r = routing(1, 1);
        h.record_check(Err("503".into()), Duration::from_secs(5));
        assert!(matches!(h.availability(Instant::now()), Avail::Out { .. }));
        assert_eq!(h.view(Instant::now()).why, Some("health_check"));
        h.record_check(Ok(()), Duration::from_secs(5));
        assert_eq!(h.availability(Instant::now()), Avail::In);
        let past = Instant::now() - Duration::from_secs(5);
        h.record(Verdict::Failure("reset"), false, None, &r, past);
        assert_eq!(h.availability(Instant::now()), Avail::Trial);
        h.record_check(Ok(()), Duration::from_secs(5));
        assert_eq!(h.availability(Instant::now()), Avail::In);
    }
}
