//! `GET /admin/upstreams` (admin listener): each upstream's state — in service or out, until
//! when and why, failed attempts in a row, requests in flight, its last health check — and
//! each model's targets.

use std::time::{Instant, SystemTime};

use serde_json::{json, Value};

use crate::state::Snapshot;

/// The admin view of a generation's upstreams and routes.
pub fn view(snap: &Snapshot) -> Value {
    let now = Instant::now();
    let upstreams: Vec<Value> = snap
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let v = u.health.view(now);
            let models: Vec<&str> = snap
                .config
                .models
                .iter()
                .zip(&snap.routes)
                .filter(|(_, r)| r.targets.iter().any(|t| t.upstream == i))
                .map(|(m, _)| m.name.as_str())
                .collect();
            let check = u.health_check.as_ref().map(|hc| {
                let (at, passing, error) = match &v.check {
                    Some((at, ok, e)) => (Some(rfc3339(*at)), Some(*ok), e.clone()),
                    None => (None, None, None),
                };
                json!({"path": hc.path, "interval_ms": hc.interval_ms, "timeout_ms": hc.timeout_ms,
                       "last_checked": at, "passing": passing, "error": error})
            });
            json!({
                "name": u.name,
                "in_service": v.in_service,
                "state": v.state,
                "out_until": v.out_until.map(rfc3339),
                "why": v.why,
                "detail": v.detail,
                "consecutive_failures": v.consecutive_failures,
                "last_failure": v.last_failure,
                "ejections": v.ejections,
                "in_flight": v.in_flight,
                "health_check": check,
                "models": models,
            })
        })
        .collect();
    let models: Vec<Value> = snap
        .config
        .models
        .iter()
        .zip(&snap.routes)
        .map(|(m, r)| {
            let targets: Vec<Value> = r
                .targets
                .iter()
                .map(|t| {
                    let name = snap.upstreams.get(t.upstream).map(|u| u.name.as_str());
                    json!({"upstream": name,
                           "upstream_model": t.upstream_model, "weight": t.weight,
                           "priority": t.priority})
                })
                .collect();
            json!({"name": m.name, "targets": targets})
        })
        .collect();
    let r = &snap.config.routing;
    json!({
        "object": "list",
        "data": upstreams,
        "models": models,
        "routing": {"retries": r.retries, "retry_on": r.retry_on, "eject_after": r.eject_after,
                    "eject_seconds": r.eject_seconds},
    })
}

/// RFC 3339, UTC, milliseconds (as the audit log writes times).
fn rfc3339(t: SystemTime) -> String {
    let d = time::OffsetDateTime::from(t);
    let d = d
        .replace_nanosecond(d.millisecond() as u32 * 1_000_000)
        .unwrap_or(d);
    d.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
