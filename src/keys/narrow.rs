//! "A key made by a key can only narrow it" (SPEC §12): models, rate limits and expiry.

use sluice_filters::policy::RateLimitSpec;
use sluice_filters::Grants;

/// Whether every name `pattern` matches is matched by `by` too: `*` in `by` covers any run of
/// `pattern` (its wildcards included), `?` one character or `?`, a literal only itself. Sound
/// (never says yes wrongly); it may say no to exotic equivalent spellings, which then need
/// spelling the way the caller's own globs do.
pub fn covers(by: &str, pattern: &str) -> bool {
    let b: Vec<char> = by.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // reach[j]: `by[..i]` can produce `pattern[..j]`.
    let mut reach = vec![false; p.len() + 1];
    reach[0] = true;
    for &c in &b {
        let mut next = vec![false; p.len() + 1];
        for j in 0..=p.len() {
            match c {
                '*' => next[j] = reach[..=j].iter().any(|r| *r),
                '?' => next[j] = j > 0 && reach[j - 1] && p[j - 1] != '*',
                lit => next[j] = j > 0 && reach[j - 1] && p[j - 1] == lit,
            }
        }
        reach = next;
    }
    reach[p.len()]
}

/// The models a new key may have: `requested` when each pattern lies within what the caller
/// may use (its role's globs and its key's own), else the first one that does not. Nothing
/// requested: the caller's own narrowing, inherited.
pub fn models(
    caller: &Grants,
    requested: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, String> {
    let Some(requested) = requested else {
        return Ok(caller.key_models.clone());
    };
    for p in &requested {
        let by_role = caller.models.iter().any(|g| covers(g, p));
        let by_key = caller
            .key_models
            .as_ref()
            .is_none_or(|k| k.iter().any(|g| covers(g, p)));
        if !(by_role && by_key) {
            return Err(p.clone());
        }
    }
    Ok(Some(requested))
}

/// The rate limit a new key gets: the requested one, each limit the caller's key has filled in
/// from it; `Err(field)` when a limit is looser than the caller's.
pub fn rate_limit(
    caller: Option<&RateLimitSpec>,
    requested: Option<RateLimitSpec>,
) -> Result<Option<RateLimitSpec>, &'static str> {
    let Some(c) = caller else {
        return Ok(requested);
    };
    let r = requested.unwrap_or_default();
    let merged = RateLimitSpec {
        requests_per_minute: r.requests_per_minute.or(c.requests_per_minute),
        tokens_per_minute: r.tokens_per_minute.or(c.tokens_per_minute),
        burst: r.burst.or(c.burst),
        token_burst: r.token_burst.or(c.token_burst),
    };
    let within = |mine: Option<u64>, theirs: Option<u64>| match theirs {
        None => true,
        Some(t) => mine.is_some_and(|m| m <= t),
    };
    let checks = [
        (
            "requests_per_minute",
            merged.requests_per_minute,
            c.requests_per_minute,
        ),
        (
            "tokens_per_minute",
            merged.tokens_per_minute,
            c.tokens_per_minute,
        ),
        (
            "burst",
            merged.burst.or(merged.requests_per_minute),
            c.burst.or(c.requests_per_minute),
        ),
        (
            "token_burst",
            merged.token_burst.or(merged.tokens_per_minute),
            c.token_burst.or(c.tokens_per_minute),
        ),
    ];
    for (field, mine, theirs) in checks {
        if !within(mine, theirs) {
            return Err(field);
        }
    }
    Ok(Some(merged))
}

/// The expiry a new key gets: never later than the caller's own.
pub fn expires(caller: Option<i64>, requested: Option<i64>) -> Result<Option<i64>, i64> {
    match (caller, requested) {
        (Some(c), Some(r)) if r > c => Err(c),
        (Some(c), None) => Ok(Some(c)),
        (_, r) => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_is_sound() {
        assert!(covers("mock-*", "mock-echo"));
        assert!(covers("mock-*", "mock-e*"));
        assert!(covers("*", "*"));
        assert!(covers("mock-?", "mock-?"));
        assert!(covers("a*", "a?"));
        assert!(!covers("mock-?", "mock-*"));
        assert!(!covers("mock-echo", "mock-*"));
        assert!(!covers("mock-*", "*"));
        assert!(!covers("gpt-*", "mock-echo"));
        assert!(covers("*-mini", "gpt-4o-mini"));
    }

    fn grants(models: &[&str], key: Option<&[&str]>) -> Grants {
        Grants {
            models: models.iter().map(|s| s.to_string()).collect(),
            key_models: key.map(|k| k.iter().map(|s| s.to_string()).collect()),
            ..Grants::default()
        }
    }

    #[test]
    fn models_only_narrow() {
        let g = grants(&["mock-*"], Some(&["mock-echo"]));
        assert_eq!(models(&g, None), Ok(Some(vec!["mock-echo".into()])));
        assert_eq!(
            models(&g, Some(vec!["mock-echo".into()])),
            Ok(Some(vec!["mock-echo".into()]))
        );
        assert_eq!(
            models(&g, Some(vec!["mock-*".into()])),
            Err("mock-*".into())
        );
        let g = grants(&["mock-*"], None);
        assert_eq!(models(&g, None), Ok(None));
        assert_eq!(models(&g, Some(vec!["*".into()])), Err("*".into()));
    }

    #[test]
    fn rate_limits_only_tighten() {
        let c = RateLimitSpec {
            requests_per_minute: Some(30),
            ..RateLimitSpec::default()
        };
        let got = rate_limit(Some(&c), None)
            .unwrap_or_default()
            .unwrap_or_default();
        assert_eq!(got.requests_per_minute, Some(30));
        let tighter = RateLimitSpec {
            requests_per_minute: Some(10),
            ..RateLimitSpec::default()
        };
        assert!(rate_limit(Some(&c), Some(tighter)).is_ok());
        let looser = RateLimitSpec {
            requests_per_minute: Some(31),
            ..RateLimitSpec::default()
        };
        assert_eq!(
            rate_limit(Some(&c), Some(looser)),
            Err("requests_per_minute")
        );
        let burst = RateLimitSpec {
            burst: Some(100),
            ..RateLimitSpec::default()
        };
        assert_eq!(rate_limit(Some(&c), Some(burst)), Err("burst"));
        assert!(rate_limit(None, Some(RateLimitSpec::default())).is_ok());
    }

    #[test]
    fn expiry_never_outlives_the_caller() {
        assert_eq!(expires(Some(100), None), Ok(Some(100)));
        assert_eq!(expires(Some(100), Some(50)), Ok(Some(50)));
        assert_eq!(expires(Some(100), Some(150)), Err(100));
        assert_eq!(expires(None, None), Ok(None));
    }
}
