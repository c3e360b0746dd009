//! `[dlp]`: the settings, their checks, and the detectors they compile to.

use std::sync::Arc;

use serde::Deserialize;

use super::allow::{self, AllowSettings};
use super::detectors::{self, builtin_names, Pack, Trigger};
use super::json::JsonScan;
use super::literals::{first_bytes, literal_prefixes};
use super::pack_actions::{self, PackActions};
use super::scanner::{builtins, compile_dfa, last_line, Detector, Scanner};
use super::section::{self, Dlp};
use crate::config::{ConfigError, ConfigErrors, Section};

/// `[dlp]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpSettings {
    /// Built-in detector packs: `secrets`, `pii`. Both when left out.
    #[serde(default = "default_packs")]
    pub packs: Vec<String>,
    #[serde(default = "default_request_action")]
    pub request_action: Action,
    #[serde(default = "default_response_action")]
    pub response_action: Action,
    #[serde(default)]
    pub rules: Vec<RuleSettings>,
    /// `[[dlp.allow]]`: known values that are not findings.
    #[serde(default)]
    pub allow: Vec<AllowSettings>,
    /// The largest body DLP scans; a larger one is refused rather than forwarded unscanned.
    #[serde(default = "default_max_scan_bytes")]
    pub max_scan_bytes: usize,
    /// `[dlp.pack_actions.<pack>]`: a built-in pack's own actions.
    #[serde(default)]
    pub pack_actions: std::collections::BTreeMap<String, PackActions>,
}

fn default_packs() -> Vec<String> {
    Pack::NAMES.iter().map(|s| s.to_string()).collect()
}
fn default_request_action() -> Action {
    Action::Block
}
fn default_response_action() -> Action {
    Action::Redact
}
fn default_max_scan_bytes() -> usize {
    16 << 20
}

impl Default for DlpSettings {
    /// The same as an empty `[dlp]` section.
    fn default() -> Self {
        DlpSettings {
            packs: default_packs(),
            request_action: default_request_action(),
            response_action: default_response_action(),
            rules: Vec::new(),
            allow: Vec::new(),
            max_scan_bytes: default_max_scan_bytes(),
            pack_actions: Default::default(),
        }
    }
}

/// `[[dlp.rules]]`: a custom detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    pub name: String,
    /// A Rust `regex` pattern. `\b` is an ASCII word boundary, as in the built-ins.
    pub regex: Option<String>,
    /// Whole words or phrases, matched ASCII case-insensitively.
    pub keywords: Option<Vec<String>>,
    /// Overrides the direction's action for this rule, in both directions.
    pub action: Option<Action>,
    /// Overrides `action` (and `dlp.request_action`) for requests.
    #[serde(default)]
    pub request_action: Option<Action>,
    /// Overrides `action` (and `dlp.response_action`) for responses.
    #[serde(default)]
    pub response_action: Option<Action>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Block,
    Redact,
    Mask,
    Monitor,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Mask => "mask",
            Action::Monitor => "monitor",
        }
    }
}

/// The direction a body travels, as findings name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::Request => 0,
            Direction::Response => 1,
        }
    }
}

/// The detector name findings use for a body DLP could not scan.
pub const UNSCANNABLE: &str = "unscannable_body";

impl DlpSettings {
    /// Each detector's action for `dir` under these settings: a custom rule's own, else its
    /// pack's (`dlp.pack_actions`), else the direction's.
    pub fn actions(&self, scanner: &Scanner, dir: Direction) -> Vec<Action> {
        let default = match dir {
            Direction::Request => self.request_action,
            Direction::Response => self.response_action,
        };
        let mut actions = scanner.actions(dir, default);
        pack_actions::apply(&self.pack_actions, scanner, dir, &mut actions);
        actions
    }

    /// The packs, the detectors (the packs' built-ins, then the custom rules) and the allow
    /// rules compiled against their names: the one place `[dlp]` is compiled.
    fn compile_with_allow(&self, errs: &mut Vec<ConfigError>) -> Compiled {
        section::count_compile();
        let (packs, detectors) = self.compile(errs);
        let names: Vec<&str> = detectors.iter().map(|d| d.name.as_str()).collect();
        let allow = allow::compile(&self.allow, &names, errs);
        Compiled {
            packs,
            detectors,
            allow,
        }
    }

    /// Compiles the configured detectors, reporting every problem with its field path.
    fn compile(&self, errs: &mut Vec<ConfigError>) -> (Vec<Pack>, Vec<Arc<Detector>>) {
        let mut packs = Vec::new();
        for (i, p) in self.packs.iter().enumerate() {
            match Pack::parse(p) {
                Some(pack) if !packs.contains(&pack) => packs.push(pack),
                Some(_) => errs.push(ConfigError::new(
                    format!("dlp.packs[{i}]"),
                    format!("pack `{p}` is listed twice"),
                )),
                None => errs.push(ConfigError::new(
                    format!("dlp.packs[{i}]"),
                    format!("unknown pack `{p}` (known: {})", Pack::NAMES.join(", ")),
                )),
            }
        }
        pack_actions::validate(&self.pack_actions, &self.packs, errs);
        if self.max_scan_bytes == 0 {
            errs.push(ConfigError::new("dlp.max_scan_bytes", "must be at least 1"));
        }
        let mut out: Vec<Arc<Detector>> = builtins()
            .iter()
            .zip(detectors::BUILTINS.iter())
            .filter(|(_, b)| packs.contains(&b.pack))
            .map(|(d, _)| d.clone())
            .collect();
        let mut names: Vec<&str> = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("dlp.rules[{i}]");
            if let Some(msg) = name_problem(&r.name) {
                errs.push(ConfigError::new(format!("{at}.name"), msg));
            } else if builtin_names().any(|b| b == r.name) || r.name == UNSCANNABLE {
                errs.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("`{}` is a built-in detector's name; pick another", r.name),
                ));
            } else if names.contains(&r.name.as_str()) {
                errs.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate rule name `{}`", r.name),
                ));
            }
            names.push(&r.name);
            match compile_rule(r) {
                Ok(d) => out.push(Arc::new(d)),
                Err((field, msg)) => errs.push(ConfigError::new(format!("{at}{field}"), msg)),
            }
        }
        (packs, out)
    }
}

/// `[dlp]` compiled: what [`Dlp`] is made of.
pub(super) struct Compiled {
    pub packs: Vec<Pack>,
    pub detectors: Vec<Arc<Detector>>,
    pub allow: Vec<allow::Allow>,
}

impl Section for DlpSettings {
    const NAME: &'static str = "dlp";
    type Built = Dlp;

    /// Compiles the detectors and allow rules once; the filter and the field scrubber share
    /// the result.
    fn build(&self) -> Result<Dlp, ConfigErrors> {
        let mut errs = Vec::new();
        let compiled = self.compile_with_allow(&mut errs);
        if errs.is_empty() {
            Ok(Dlp::new(self, compiled))
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 64 {
        Some("must be at most 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        Some("use only ASCII letters, digits, `_`, `-` and `.` (it names findings in markers, audit records and metrics)")
    } else {
        None
    }
}

/// A rule's own actions for requests and for responses.
fn rule_actions(r: &RuleSettings) -> [Option<Action>; 2] {
    [
        r.request_action.or(r.action),
        r.response_action.or(r.action),
    ]
}

/// Compiles a custom rule; errors carry the field (`.regex`, `.keywords[1]`) they are about.
fn compile_rule(r: &RuleSettings) -> Result<Detector, (String, String)> {
    match (&r.regex, &r.keywords) {
        (Some(_), Some(_)) => Err((
            String::new(),
            "give either `regex` or `keywords`, not both".into(),
        )),
        (None, None) => Err((String::new(), "give `regex` or `keywords`".into())),
        (Some(re), None) => {
            let err = |m: String| (".regex".to_string(), m);
            let hir = regex_automata::util::syntax::parse(re)
                .map_err(|e| err(last_line(&e.to_string())))?;
            let props = hir.properties();
            if props.look_set().contains_anchor_haystack() {
                return Err(err(
                    "`^`, `$`, `\\A` and `\\z` anchor to the whole text, which DLP scans in pieces; \
                     use `\\b`, or `(?m)` for line anchors"
                        .into(),
                ));
            }
            if props.minimum_len() == Some(0) {
                return Err(err("the pattern matches the empty string".into()));
            }
            let dfa = compile_dfa(&ascii_word_boundaries(re), true).map_err(err)?;
            let trigger = literal_prefixes(&dfa, 4, 64)
                .or_else(|| literal_prefixes(&dfa, 3, 64))
                .map(Trigger::Literals)
                .unwrap_or_else(|| Trigger::Bytes(first_bytes(&dfa)));
            let min_len = props.minimum_len().unwrap_or(1);
            Ok(Detector::custom(&r.name, dfa, trigger, rule_actions(r))
                .with_min_len(min_len)
                .with_line_anchors(props.look_set().contains_anchor_line()))
        }
        (None, Some(kws)) => {
            if kws.is_empty() {
                return Err((".keywords".into(), "give at least one keyword".into()));
            }
            let mut alts = Vec::with_capacity(kws.len());
            for (j, k) in kws.iter().enumerate() {
                if k.trim().is_empty() {
                    return Err((format!(".keywords[{j}]"), "must not be empty".into()));
                }
                let edge = |c: Option<char>| {
                    if c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                        r"\b"
                    } else {
                        ""
                    }
                };
                alts.push(format!(
                    "{}{}{}",
                    edge(k.chars().next()),
                    regex::escape(k),
                    edge(k.chars().last())
                ));
            }
            let pattern = format!("(?i:{})", alts.join("|"));
            let dfa = compile_dfa(&pattern, false).map_err(|m| (".keywords".to_string(), m))?;
            let min_len = kws.iter().map(|k| k.len()).min().unwrap_or(1);
            let lits = kws.iter().map(|k| k.as_bytes().to_vec()).collect();
            Ok(
                Detector::custom(&r.name, dfa, Trigger::Keywords(lits), rule_actions(r))
                    .with_min_len(min_len),
            )
        }
    }
}

/// Makes every word boundary of a pattern ASCII (`\b` → `(?-u:\b)`), leaving Unicode classes
/// alone: a DFA can then decide boundaries without giving up on non-ASCII text, and custom rules
/// behave like the built-ins.
fn ascii_word_boundaries(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 16);
    let mut it = p.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('b') if it.peek() == Some(&'{') => {
                let mut spec = String::new();
                for c in it.by_ref() {
                    spec.push(c);
                    if c == '}' {
                        break;
                    }
                }
                out.push_str(&format!("(?-u:\\b{spec})"));
            }
            Some(e @ ('b' | 'B' | '<' | '>')) => out.push_str(&format!("(?-u:\\{e})")),
            Some(e) => {
                out.push('\\');
                out.push(e);
            }
            None => out.push('\\'),
        }
    }
    out
}

impl Scanner {
    /// A scanner for these settings (the built-ins of its packs, then its custom rules), for
    /// tools and tests; a config load builds the section ([`Section::build`]) instead.
    pub fn from_settings(settings: &DlpSettings) -> Result<Scanner, ConfigErrors> {
        let mut errs = Vec::new();
        let c = settings.compile_with_allow(&mut errs);
        if errs.is_empty() {
            Ok(Scanner::new(c.detectors).with_allow(c.allow))
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Each detector's action for a direction whose default is `default`: a custom rule's own,
    /// else `default`.
    pub fn actions(&self, dir: Direction, default: Action) -> Vec<Action> {
        (0..self.len())
            .map(|d| self.detector(d).rule_actions[dir.index()].unwrap_or(default))
            .collect()
    }

    /// Scans a whole text as a response whose default action is `action` (custom rules keep
    /// their own) and returns the released text: what a client would see. For tests and
    /// benchmarks.
    pub fn apply(&self, text: &str, action: Action) -> String {
        let actions = self.actions(Direction::Response, action);
        let mut js = JsonScan::new(self, &actions);
        js.text(text).unwrap_or_else(|| text.to_string())
    }
}
