//! `[dlp.pack_actions.<pack>]`: a built-in pack's own actions, overriding `dlp.request_action`
//! and `dlp.response_action` for its detectors (custom rules keep their own).
//!
//! Why: one action per direction is too coarse for tools that put personal data in their own
//! instructions. Claude Code's built-in system prompt carries an e-mail address, so a `pii`
//! block on requests refuses every call it makes; redacting personal data in prompts while still
//! blocking secrets keeps both the tool and the guarantee that matters most.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::detectors::{Pack, BUILTINS};
use super::scanner::Scanner;
use super::settings::{Action, Direction};
use crate::config::ConfigError;

/// One pack's actions; each absent one falls back to the direction's.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PackActions {
    /// Both directions.
    pub action: Option<Action>,
    /// Requests (overrides `action`).
    pub request_action: Option<Action>,
    /// Responses (overrides `action`).
    pub response_action: Option<Action>,
}

impl PackActions {
    fn for_direction(&self, dir: Direction) -> Option<Action> {
        match dir {
            Direction::Request => self.request_action.or(self.action),
            Direction::Response => self.response_action.or(self.action),
        }
    }
}

/// Checks that every pack named is a known one and is enabled in `dlp.packs`.
pub(crate) fn validate(
    by_pack: &BTreeMap<String, PackActions>,
    packs: &[String],
    errs: &mut Vec<ConfigError>,
) {
    for name in by_pack.keys() {
        let path = format!("dlp.pack_actions.{name}");
        if Pack::parse(name).is_none() {
            errs.push(ConfigError::new(
                path,
                format!("unknown pack `{name}` (known: {})", Pack::NAMES.join(", ")),
            ));
        } else if !packs.iter().any(|p| p == name) {
            errs.push(ConfigError::new(
                path,
                format!("the pack `{name}` is not in dlp.packs, so it finds nothing to act on"),
            ));
        }
    }
}

/// Overrides, in `actions` (one per detector of `scanner`), the action of every built-in
/// detector whose pack has its own for `dir`.
pub(crate) fn apply(
    by_pack: &BTreeMap<String, PackActions>,
    scanner: &Scanner,
    dir: Direction,
    actions: &mut [Action],
) {
    if by_pack.is_empty() {
        return;
    }
    for (d, action) in actions.iter_mut().enumerate().take(scanner.len()) {
        let name = scanner.detector(d).name.as_str();
        let Some(builtin) = BUILTINS.iter().find(|b| b.name == name) else {
            continue;
        };
        let pack = Pack::NAMES
            .iter()
            .find(|n| Pack::parse(n) == Some(builtin.pack));
        if let Some(own) = pack
            .and_then(|p| by_pack.get(*p))
            .and_then(|a| a.for_direction(dir))
        {
            *action = own;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::DlpSettings;

    fn settings(toml_text: &str) -> DlpSettings {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn action_of(s: &DlpSettings, dir: Direction, detector: &str) -> Action {
        let scanner = Scanner::from_settings(s).unwrap_or_else(|e| panic!("{e:?}"));
        let actions = s.actions(&scanner, dir);
        let i = (0..scanner.len())
            .find(|&i| scanner.detector(i).name == detector)
            .unwrap_or_else(|| panic!("no detector {detector}"));
        actions[i]
    }

    #[test]
    fn a_pack_overrides_its_own_detectors_only() {
        let s = settings(
            "request_action = \"block\"\n[pack_actions.pii]\nrequest_action = \"redact\"\n\
             [[rules]]\nname = \"codes\"\nkeywords = [\"BLUEBIRD\"]\naction = \"monitor\"",
        );
        assert_eq!(action_of(&s, Direction::Request, "email"), Action::Redact);
        assert_eq!(
            action_of(&s, Direction::Request, "credit_card"),
            Action::Redact
        );
        assert_eq!(
            action_of(&s, Direction::Request, "aws_access_key"),
            Action::Block
        );
        assert_eq!(action_of(&s, Direction::Request, "codes"), Action::Monitor);
        // Responses keep the direction's default.
        assert_eq!(action_of(&s, Direction::Response, "email"), Action::Redact);
        let s = settings("[pack_actions.secrets]\naction = \"mask\"");
        assert_eq!(
            action_of(&s, Direction::Response, "aws_access_key"),
            Action::Mask
        );
        assert_eq!(action_of(&s, Direction::Request, "email"), Action::Block);
    }

    #[test]
    fn unknown_or_disabled_packs_are_errors_with_their_path() {
        use crate::config::Section;
        let errs = settings("packs = [\"secrets\"]\n[pack_actions.pii]\naction = \"redact\"\n[pack_actions.phi]\naction = \"redact\"")
            .build()
            .err()
            .unwrap_or_default()
            .0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["dlp.pack_actions.phi", "dlp.pack_actions.pii"]);
        assert!(toml::from_str::<DlpSettings>("[pack_actions.pii]\nrequest = \"redact\"").is_err());
    }
}
