//! `[[dlp.allow]]`: known values that are not findings — the test card a team's fixtures use,
//! a published example key, its staging hosts' addresses.
//!
//! An allow rule names an exact `value` or a `regex` that must match a finding's *whole* text,
//! and optionally the `detectors` it exempts (every detector when left out). It is applied to
//! each match as the scanner reports it, from the match's bytes alone, so streamed and whole
//! texts still agree: an allowed value is released as it is, and a neighbour of it (one
//! character more or less, another value the same detector finds) is still a finding.

use regex::bytes::Regex;
use serde::Deserialize;

use crate::config::ConfigError;

/// One `[[dlp.allow]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowSettings {
    /// The exact text of an allowed finding.
    pub value: Option<String>,
    /// A regex that must match an allowed finding's whole text (it is anchored at both ends).
    pub regex: Option<String>,
    /// The detectors (built-in or `[[dlp.rules]]` names) it applies to; all when left out.
    pub detectors: Option<Vec<String>>,
}

/// A compiled allow rule.
#[derive(Debug, Clone)]
pub(crate) struct Allow {
    what: Exempt,
    /// Indexes into the scanner's detectors; `None`: every detector.
    detectors: Option<Vec<usize>>,
}

#[derive(Debug, Clone)]
enum Exempt {
    Value(Vec<u8>),
    Regex(Regex),
}

impl Allow {
    /// The same rule over another scanner's detectors: `to` maps an index of this rule's
    /// scanner to the other's.
    pub(crate) fn reindexed(&self, to: impl Fn(usize) -> Option<usize>) -> Allow {
        Allow {
            what: self.what.clone(),
            detectors: self
                .detectors
                .as_ref()
                .map(|ds| ds.iter().filter_map(|&d| to(d)).collect()),
        }
    }

    /// Whether this rule exempts `text`, found by detector `d`.
    pub(crate) fn exempts(&self, d: usize, text: &[u8]) -> bool {
        if self.detectors.as_ref().is_some_and(|ds| !ds.contains(&d)) {
            return false;
        }
        match &self.what {
            Exempt::Value(v) => v == text,
            Exempt::Regex(r) => r.is_match(text),
        }
    }
}

/// Compiles the allow rules against the detectors' names (in scanner order), reporting every
/// problem with its field path (`dlp.allow[1].regex: …`).
pub(crate) fn compile(
    rules: &[AllowSettings],
    names: &[&str],
    errs: &mut Vec<ConfigError>,
) -> Vec<Allow> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("dlp.allow[{i}]");
        let what = match (&r.value, &r.regex) {
            (Some(_), Some(_)) => Err((at.clone(), "give either `value` or `regex`, not both")),
            (None, None) => Err((at.clone(), "give `value` or `regex`")),
            (Some(v), None) if v.is_empty() => Err((format!("{at}.value"), "must not be empty")),
            (Some(v), None) => Ok(Exempt::Value(v.as_bytes().to_vec())),
            (None, Some(re)) => match Regex::new(&format!("^(?:{re})$")) {
                Ok(r) if r.is_match(b"") => Err((
                    format!("{at}.regex"),
                    "the pattern matches the empty string",
                )),
                Ok(r) => Ok(Exempt::Regex(r)),
                Err(e) => {
                    let msg = super::scanner::last_line(&e.to_string());
                    errs.push(ConfigError::new(format!("{at}.regex"), msg));
                    continue;
                }
            },
        };
        let detectors = r.detectors.as_ref().map(|ds| {
            if ds.is_empty() {
                errs.push(ConfigError::new(
                    format!("{at}.detectors"),
                    "give at least one detector, or leave the field out to exempt from all",
                ));
            }
            ds.iter()
                .enumerate()
                .filter_map(|(j, name)| {
                    let found = names.iter().position(|n| n == name);
                    if found.is_none() {
                        errs.push(ConfigError::new(
                            format!("{at}.detectors[{j}]"),
                            format!(
                                "unknown detector `{name}` (a built-in of the configured packs or a [[dlp.rules]] name)"
                            ),
                        ));
                    }
                    found
                })
                .collect()
        });
        match what {
            Ok(what) => out.push(Allow { what, detectors }),
            Err((path, msg)) => errs.push(ConfigError::new(path, msg)),
        }
    }
    out
}
