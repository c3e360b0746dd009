//! Choosing a target for an attempt: the lowest priority that has a target in service, then by
//! weight among those; a target whose ejection is over is in the draw for its one trial
//! request. When no untried target is in service, the first attempt goes to the one due back
//! soonest rather than failing untried; a retry goes to the ejected one due back soonest (an
//! ejected target is tried before a request fails, SPEC §11), never to one an upstream's
//! `Retry-After` or a failing health check holds out.
//!
//! Why not `pingora-load-balancing`'s selection: its `Weighted` picks the first backend by
//! weight but falls back *uniformly* once that one is refused (so excluding a tried or ejected
//! target skews the others' shares), it has no priorities, and a `Backend` is identified by its
//! socket address and weight, so two upstreams on one address (two deployments behind one
//! host, with other paths or keys) would be one. The weighted draw itself is a few lines.

use std::time::Instant;

use rand::Rng;

use super::health::Avail;
use super::Target;

/// The target chosen for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index in the model's targets.
    pub index: usize,
    /// It is the trial request after an ejection (its outcome ends or renews the ejection).
    pub trial: bool,
}

/// Picks among `targets` (sorted by priority) those not in `tried`. `fallback`: when none is in
/// service, take the untried one due back soonest.
pub fn pick(targets: &[Target], tried: &[usize], now: Instant, fallback: bool) -> Option<Pick> {
    let mut avail: Vec<Option<Avail>> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (!tried.contains(&i)).then(|| t.health.availability(now)))
        .collect();
    let eligible = |a: Option<Avail>| matches!(a, Some(Avail::In | Avail::Trial));
    let mut start = 0;
    while start < targets.len() {
        let priority = targets[start].priority;
        let end = start
            + targets[start..]
                .iter()
                .take_while(|t| t.priority == priority)
                .count();
        loop {
            let total: u64 = (start..end)
                .filter(|&i| eligible(avail[i]))
                .map(|i| u64::from(targets[i].weight))
                .sum();
            if total == 0 {
                break;
            }
            let mut r = rand::thread_rng().gen_range(0..total);
            let Some(chosen) = (start..end).filter(|&i| eligible(avail[i])).find(|&i| {
                let w = u64::from(targets[i].weight);
                if r < w {
                    true
                } else {
                    r -= w;
                    false
                }
            }) else {
                break;
            };
            if avail[chosen] == Some(Avail::In) {
                return Some(Pick {
                    index: chosen,
                    trial: false,
                });
            }
            if targets[chosen].health.try_claim_trial(now) {
                return Some(Pick {
                    index: chosen,
                    trial: true,
                });
            }
            // Another request took its trial: out for this draw.
            avail[chosen] = Some(Avail::Out { due: now });
        }
        start = end;
    }
    if !fallback {
        return None;
    }
    let mut soonest: Option<(usize, Instant)> = None;
    for (i, a) in avail.iter().enumerate() {
        let due = match a {
            Some(Avail::Out { due }) => *due,
            Some(_) => now,
            None => continue,
        };
        if soonest.is_none_or(|(_, d)| due < d) {
            soonest = Some((i, due));
        }
    }
    soonest.map(|(index, _)| Pick {
        index,
        trial: false,
    })
}

/// A retry's target: as [`pick`] without its fallback, else the untried target out by
/// ejection that is due back soonest — an ejected target is tried before a request fails
/// (SPEC §11) — but never one an upstream's `Retry-After` or a failing check holds out.
pub fn pick_retry(targets: &[Target], tried: &[usize], now: Instant) -> Option<Pick> {
    if let Some(p) = pick(targets, tried, now, false) {
        return Some(p);
    }
    targets
        .iter()
        .enumerate()
        .filter(|(i, _)| !tried.contains(i))
        .filter_map(|(i, t)| t.health.ejected_until().map(|until| (i, until)))
        .min_by_key(|&(_, until)| until)
        .map(|(index, _)| Pick {
            index,
            trial: false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::config::RoutingConfig;
    use crate::upstream::health::{TargetHealth, Verdict};
    use std::sync::Arc;
    use std::time::Duration;

    fn target(hs: &[Arc<TargetHealth>], upstream: usize, weight: u32, priority: u32) -> Target {
        Target {
            upstream,
            health: hs[upstream].clone(),
            upstream_model: None,
            weight,
            priority,
        }
    }

    fn healths(n: usize) -> Vec<Arc<TargetHealth>> {
        (0..n)
            .map(|i| Arc::new(TargetHealth::new(&i.to_string())))
            .collect()
    }

    fn eject(h: &TargetHealth, now: Instant, seconds: u64) {
        let r = RoutingConfig {
            eject_after: 1,
            eject_seconds: seconds,
            ..RoutingConfig::default()
        };
        h.record(Verdict::Failure("connect"), false, None, &r, now);
    }

    #[test]
    fn weights_split_the_draw_and_priorities_order_it() {
        let hs = healths(3);
        let targets = [
            target(&hs, 0, 3, 1),
            target(&hs, 1, 1, 1),
            target(&hs, 2, 5, 2),
        ];
        let now = Instant::now();
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            let p = pick(&targets, &[], now, true);
            counts[p.map(|p| p.index).unwrap_or(9)] += 1;
        }
        assert_eq!(counts[2], 0, "priority 2 unused while priority 1 serves");
        let share = f64::from(counts[0]) / 4000.0;
        assert!((0.68..0.82).contains(&share), "{counts:?}");
        // The first target tried: the rest of its priority, then the next priority.
        let p = pick(&targets, &[0], now, true);
        assert_eq!(p.map(|p| p.index), Some(1));
        let p = pick(&targets, &[0, 1], now, false);
        assert_eq!(p.map(|p| p.index), Some(2));
        assert_eq!(pick(&targets, &[0, 1, 2], now, true), None);
    }

    #[test]
    fn a_retry_takes_an_ejected_target_but_not_one_held_out_by_retry_after() {
        let hs = healths(3);
        let targets = [
            target(&hs, 0, 1, 1),
            target(&hs, 1, 1, 1),
            target(&hs, 2, 1, 1),
        ];
        let now = Instant::now();
        eject(&hs[1], now, 30);
        let r = RoutingConfig::default();
        hs[2].record(
            Verdict::Success,
            false,
            Some((429, Duration::from_secs(60))),
            &r,
            now,
        );
        // 0 just failed: the ejected 1, never 0 again, never the held-out 2.
        assert_eq!(pick(&targets, &[0], now, false), None);
        assert_eq!(
            pick_retry(&targets, &[0], now),
            Some(Pick {
                index: 1,
                trial: false
            })
        );
        assert_eq!(pick_retry(&targets, &[0, 1], now), None);
    }

    #[test]
    fn out_targets_are_skipped_and_all_out_takes_the_soonest() {
        let hs = healths(2);
        let targets = [target(&hs, 0, 1, 1), target(&hs, 1, 1, 2)];
        let now = Instant::now();
        eject(&hs[0], now, 60);
        assert_eq!(pick(&targets, &[], now, true).map(|p| p.index), Some(1));
        eject(&hs[1], now, 5);
        assert_eq!(pick(&targets, &[], now, false), None);
        assert_eq!(
            pick(&targets, &[], now, true),
            Some(Pick {
                index: 1,
                trial: false
            })
        );
        // b's ejection is over: its trial; a second request meanwhile gets the soonest.
        let later = now + Duration::from_secs(6);
        assert_eq!(
            pick(&targets, &[], later, true),
            Some(Pick {
                index: 1,
                trial: true
            })
        );
        assert_eq!(pick(&targets, &[], later, false), None);
    }
}
