//! The `dlp` filter: secrets and personal data in both directions, streams included.
//!
//! - **Requests**: a JSON body is scanned as the decoded strings it holds (every string, object
//!   keys and integers too, and JSON documents nested in strings such as tool-call arguments),
//!   and a rewritten body is re-encoded as valid JSON with its structure intact. Any other body
//!   is scanned as bytes. A `block` finding answers `400 dlp_blocked`, naming the detectors and
//!   never the text.
//! - **Responses**: non-streamed bodies are scanned whole; streams per choice as the deltas
//!   flow, holding back only what could still become a match (see [`stream`]). A `block` ends
//!   the choice with `finish_reason: "content_filter"`.
//! - **Fails closed**: a body it cannot scan (a content encoding, over `max_scan_bytes`) is not
//!   forwarded.
//! - Findings (detector, direction, action, count, never the value) go to [`Cx::dlp`] for the
//!   audit record and to `sluice_dlp_findings_total{detector,direction,action}`.
//!
//! How matches are found fast is explained in [`scanner`]; what replaces them in [`redact`].

mod allow;
mod classify;
mod detectors;
mod iban;
mod json;
mod literals;
mod redact;
mod scanner;
mod secrets;
mod stream;
pub mod tokens;
pub mod validate;
mod vocabulary;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;
use serde_json::Value;

use crate::api::{Api, ErrorInfo};
use crate::policy::{BuildError, ConfigError, Policy};
use crate::{
    Cx, Filter, JsonBody, Needs, Reply, Request, ResponseHead, Shared, StreamEvent, Verdict,
};

pub use allow::AllowSettings;
pub use detectors::builtin_names;
pub use scanner::{Match, Scanner, MAX_MATCH_BYTES};

use detectors::{Pack, Trigger};
use json::JsonScan;
use literals::{first_bytes, literal_prefixes};
use scanner::{builtins, compile_dfa, last_line, Detector};
use stream::StreamState;

/// `[dlp]`.
#[derive(Debug, Clone, Deserialize)]
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
        }
    }
}

/// `[[dlp.rules]]`: a custom detector.
#[derive(Debug, Clone, Deserialize)]
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
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        self.compile_with_allow(errs);
    }

    /// The detectors, and the allow rules compiled against their names.
    fn compile_with_allow(
        &self,
        errs: &mut Vec<ConfigError>,
    ) -> (Vec<Arc<Detector>>, Vec<allow::Allow>) {
        let detectors = self.compile(errs);
        let names: Vec<&str> = detectors.iter().map(|d| d.name.as_str()).collect();
        let allow = allow::compile(&self.allow, &names, errs);
        (detectors, allow)
    }

    /// Compiles the configured detectors, reporting every problem with its field path.
    fn compile(&self, errs: &mut Vec<ConfigError>) -> Vec<Arc<Detector>> {
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
        out
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
            Ok(Detector::custom(&r.name, dfa, trigger, rule_actions(r)).with_min_len(min_len))
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
    /// A scanner for these settings (the built-ins of its packs, then its custom rules).
    pub fn from_settings(settings: &DlpSettings) -> Result<Scanner, BuildError> {
        let mut errs = Vec::new();
        let (detectors, allow) = settings.compile_with_allow(&mut errs);
        if errs.is_empty() {
            Ok(Scanner::new(detectors).with_allow(allow))
        } else {
            Err(BuildError(errs))
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

/// The `dlp` filter.
pub struct DlpFilter {
    scanner: Arc<Scanner>,
    request_actions: Vec<Action>,
    response_actions: Vec<Action>,
    max_scan_bytes: usize,
    findings: Option<Arc<IntCounterVec>>,
}

/// Per-request state of the response side.
#[derive(Clone, Default)]
struct ResponseState {
    /// The response's content encoding, when it is one DLP cannot read.
    unreadable_encoding: Option<String>,
}

impl DlpFilter {
    /// Builds the filter from `[dlp]`; registers its metric in `shared` (once per process).
    pub fn new(settings: &DlpSettings, shared: &Shared) -> Result<DlpFilter, BuildError> {
        let scanner = Scanner::from_settings(settings)?;
        let request_actions = scanner.actions(Direction::Request, settings.request_action);
        let response_actions = scanner.actions(Direction::Response, settings.response_action);
        let findings = shared
            .metric("dlp_findings", || {
                IntCounterVec::new(
                    Opts::new(
                        "sluice_dlp_findings_total",
                        "DLP findings, by detector, direction and action",
                    ),
                    &["detector", "direction", "action"],
                )
            })
            .map_err(|e| {
                tracing::warn!(error = %e, "dlp: cannot register sluice_dlp_findings_total");
                e
            })
            .ok();
        if let Some(m) = &findings {
            preinit_findings(m, &scanner, Direction::Request, &request_actions);
            preinit_findings(m, &scanner, Direction::Response, &response_actions);
        }
        Ok(DlpFilter {
            scanner: Arc::new(scanner),
            request_actions,
            response_actions,
            max_scan_bytes: settings.max_scan_bytes,
            findings,
        })
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    fn actions(&self, dir: Direction) -> &[Action] {
        match dir {
            Direction::Request => &self.request_actions,
            Direction::Response => &self.response_actions,
        }
    }

    fn record_one(&self, cx: &mut Cx, detector: &str, dir: Direction, action: Action, n: u32) {
        cx.record_dlp(detector, dir.as_str(), action.as_str(), n);
        if let Some(m) = &self.findings {
            m.with_label_values(&[detector, dir.as_str(), action.as_str()])
                .inc_by(u64::from(n));
        }
    }

    /// Adds matches to the request's findings and the metric, counted per detector and action.
    fn record(&self, cx: &mut Cx, dir: Direction, found: &[(usize, Action)]) {
        let mut tally: Vec<(usize, Action, u32)> = Vec::new();
        for &(d, a) in found {
            match tally.iter_mut().find(|(td, ta, _)| *td == d && *ta == a) {
                Some(t) => t.2 += 1,
                None => tally.push((d, a, 1)),
            }
        }
        for (d, a, n) in tally {
            self.record_one(cx, self.scanner.name(d), dir, a, n);
        }
    }

    fn blocked_reply(&self, blocked: &[usize]) -> Reply {
        let mut ds: Vec<usize> = blocked.to_vec();
        ds.sort_unstable();
        ds.dedup();
        let names: Vec<&str> = ds.iter().map(|&d| self.scanner.name(d)).collect();
        Reply::error(
            400,
            "dlp_blocked",
            format!(
                "The request was blocked by DLP: it contains data matched by {} ({}). \
                 Remove that data and send the request again.",
                if names.len() == 1 {
                    "the detector"
                } else {
                    "the detectors"
                },
                names.join(", ")
            ),
        )
    }

    fn unscannable(&self, cx: &mut Cx, dir: Direction, why: &str) -> String {
        self.record_one(cx, UNSCANNABLE, dir, Action::Block, 1);
        format!(
            "DLP could not scan the {} body ({why}), so it was not forwarded.",
            dir.as_str()
        )
    }

    /// Scans the request path (a key pasted into a URL is still a key): a `block` finding
    /// refuses the request; otherwise the path the audit trail records (`cx.path`) has its
    /// matches redacted, while the request goes on to its endpoint unchanged.
    fn scan_path(&self, path: &str, cx: &mut Cx) -> Option<Verdict> {
        let actions = self.actions(Direction::Request);
        let mut js = JsonScan::new(&self.scanner, actions).scan_past_blocks();
        let new = js.text(path);
        let found = std::mem::take(&mut js.found);
        let blocked = std::mem::take(&mut js.blocked);
        if found.is_empty() {
            return None;
        }
        self.record(cx, Direction::Request, &found);
        if !blocked.is_empty() {
            return Some(self.blocked_reply(&blocked).into());
        }
        // Recorded redacted whatever the action (monitor and mask included): the audit trail
        // never holds the value.
        let redact = vec![Action::Redact; actions.len()];
        let mut js = JsonScan::new(&self.scanner, &redact);
        cx.path = js.text(path).or(new).unwrap_or_else(|| path.to_string());
        None
    }

    /// A body that replaces a response DLP could not scan, in the route's API shape.
    fn unscannable_error(message: &str) -> ErrorInfo {
        ErrorInfo {
            status: 502,
            kind: "dlp_violation",
            code: "dlp_blocked",
            message: message.to_string(),
            param: None,
        }
    }

    /// Scans a non-streamed response body; `block` withholds the content from the match on
    /// and ends the answer (or the choice) the API's way.
    fn scan_response(&self, body: &mut JsonBody, cx: &mut Cx) {
        let actions = self.actions(Direction::Response);
        let mut js = JsonScan::new(&self.scanner, actions);
        match body.json() {
            Some(v) => {
                let new = response_value(&mut js, cx.api, v);
                let found = std::mem::take(&mut js.found);
                if let Some(n) = new {
                    if let Some(slot) = body.json_mut() {
                        *slot = n;
                    }
                }
                self.record(cx, Direction::Response, &found);
            }
            None => {
                let new = js.bytes(body.bytes());
                let found = std::mem::take(&mut js.found);
                if let Some(n) = new {
                    body.set_raw(Bytes::from(n));
                }
                self.record(cx, Direction::Response, &found);
            }
        }
    }
}

/// Creates, at zero, the series each detector can count on a direction (with the one action it
/// has there) and the fail-closed `unscannable_body` one, so that the first finding shows in
/// `rate()` and dashboards have every detector from the first scrape.
fn preinit_findings(m: &IntCounterVec, scanner: &Scanner, dir: Direction, actions: &[Action]) {
    for (d, action) in actions.iter().enumerate() {
        m.with_label_values(&[scanner.name(d), dir.as_str(), action.as_str()]);
    }
    m.with_label_values(&[UNSCANNABLE, dir.as_str(), Action::Block.as_str()]);
}

/// Scans an answer document. A block ends the answer, or for APIs whose answers hold several
/// (chat `choices`) the one it was found in, the API's way ([`Api::end_answer`]).
fn response_value(js: &mut JsonScan<'_>, api: &dyn Api, v: &Value) -> Option<Value> {
    let groups = api
        .answer_groups()
        .and_then(|f| v.get(f).and_then(Value::as_array).map(|a| (f, a)));
    let Some((field, groups)) = groups else {
        let before = js.blocked.len();
        let new = js.value(v);
        if js.blocked.len() == before {
            return new;
        }
        return Some(end_answer(js, api, v));
    };
    let mut out: Option<Value> = None;
    for (key, item) in v.as_object().into_iter().flatten() {
        if key == field {
            continue;
        }
        if let Some(new) = js.value(item) {
            out.get_or_insert_with(|| v.clone())[key] = new;
        }
    }
    for (i, group) in groups.iter().enumerate() {
        let before = js.blocked.len();
        let new = js.value(group);
        if js.blocked.len() == before {
            if let Some(new) = new {
                out.get_or_insert_with(|| v.clone())[field][i] = new;
            }
            continue;
        }
        out.get_or_insert_with(|| v.clone())[field][i] = end_answer(js, api, group);
    }
    out
}

/// Ends an answer (or group) that held a block: the API withholds the parts that held the
/// blocked data (told by scanning each again) and marks the end; what is left is scanned once
/// more, which cuts the remaining text at the match (its findings were counted already).
fn end_answer(js: &JsonScan<'_>, api: &dyn Api, original: &Value) -> Value {
    let (sc, actions) = (js.scanner(), js.actions());
    let held = |part: &Value| {
        let mut probe = JsonScan::new(sc, actions);
        probe.value(part);
        !probe.blocked.is_empty()
    };
    let mut doc = original.clone();
    api.end_answer(&mut doc, &held);
    let mut again = JsonScan::new(sc, actions);
    again.value(&doc).unwrap_or(doc)
}

fn content_encoding(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_ENCODING)?;
    let s = v
        .to_str()
        .unwrap_or("(not text)")
        .trim()
        .to_ascii_lowercase();
    if s.is_empty() || s == "identity" {
        None
    } else {
        Some(s)
    }
}

#[async_trait]
impl Filter for DlpFilter {
    fn name(&self) -> &str {
        "dlp"
    }

    fn needs(&self) -> Needs {
        Needs {
            response_body: true,
            stream_events: true,
        }
    }

    async fn on_request(&self, req: &mut Request<'_>, cx: &mut Cx) -> Verdict {
        if let Some(v) = self.scan_path(req.path, cx) {
            return v;
        }
        if req.body.json().is_none() && req.body.bytes().is_empty() {
            return Verdict::Continue;
        }
        if let Some(enc) = content_encoding(req.headers) {
            let msg = self.unscannable(
                cx,
                Direction::Request,
                &format!("content-encoding `{enc}`; send it uncompressed"),
            );
            return Reply::error(400, "dlp_blocked", msg).into();
        }
        if req.body.bytes().len() > self.max_scan_bytes {
            let msg = self.unscannable(
                cx,
                Direction::Request,
                &format!("larger than dlp.max_scan_bytes = {}", self.max_scan_bytes),
            );
            return Reply::error(413, "request_too_large", msg).into();
        }
        let actions = self.actions(Direction::Request);
        // A blocked request is refused whole: scan all of it, to name every detector.
        let mut js = JsonScan::new(&self.scanner, actions).scan_past_blocks();
        let new_json = req.body.json().and_then(|v| js.value(v));
        let new_raw = match req.body.json() {
            None => js.bytes(req.body.bytes()),
            Some(_) => None,
        };
        let found = std::mem::take(&mut js.found);
        let blocked = std::mem::take(&mut js.blocked);
        self.record(cx, Direction::Request, &found);
        if !blocked.is_empty() {
            return self.blocked_reply(&blocked).into();
        }
        if let Some(n) = new_json {
            if let Some(slot) = req.body.json_mut() {
                *slot = n;
            }
        }
        if let Some(n) = new_raw {
            req.body.set_raw(Bytes::from(n));
        }
        Verdict::Continue
    }

    fn on_response_head(&self, resp: &ResponseHead<'_>, cx: &mut Cx) {
        if !resp.status.is_success() {
            return;
        }
        // The engine refuses (502) a compressed body it was asked to scan before this runs;
        // an embedder's engine might not, so the state is kept to fail closed here too.
        if let Some(enc) = content_encoding(resp.headers) {
            cx.extensions.insert(ResponseState {
                unreadable_encoding: Some(enc),
            });
        }
    }

    fn on_response_body(&self, body: &mut JsonBody, cx: &mut Cx) {
        let enc = cx
            .extensions
            .get::<ResponseState>()
            .and_then(|s| s.unreadable_encoding.clone());
        let why = match enc {
            Some(enc) => Some(format!("content-encoding `{enc}`")),
            None if body.bytes().len() > self.max_scan_bytes => Some(format!(
                "larger than dlp.max_scan_bytes = {}",
                self.max_scan_bytes
            )),
            None => None,
        };
        if let Some(why) = why {
            let msg = self.unscannable(cx, Direction::Response, &why);
            body.set_raw(cx.api.error_body(&Self::unscannable_error(&msg)));
            return;
        }
        if cx.api.scans_answer() {
            self.scan_response(body, cx);
        }
    }

    fn on_stream_events(&self, events: &mut Vec<StreamEvent>, end: bool, cx: &mut Cx) {
        let mut st = cx.extensions.remove::<StreamState>().unwrap_or_default();
        let unreadable = cx
            .extensions
            .get::<ResponseState>()
            .and_then(|s| s.unreadable_encoding.clone());
        if let Some(enc) = unreadable {
            if !st.failed {
                st.failed = true;
                let msg = self.unscannable(
                    cx,
                    Direction::Response,
                    &format!("content-encoding `{enc}`"),
                );
                *events = vec![cx.api.stream_error_event(&Self::unscannable_error(&msg))];
            } else {
                events.clear();
            }
            cx.extensions.insert(st);
            return;
        }
        let scan = stream::Scan {
            api: cx.api,
            sc: &self.scanner,
            actions: self.actions(Direction::Response),
        };
        st.on_events(&scan, events, end);
        let found = std::mem::take(&mut st.found);
        self.record(cx, Direction::Response, &found);
        cx.extensions.insert(st);
    }
}

/// Builds the `dlp` filter of a `[[filters]]` entry; it is configured in `[dlp]` and takes no
/// options of its own.
pub fn build(
    policy: &Policy<'_>,
    options: &toml::Table,
    path: &str,
    shared: &Shared,
) -> Result<Arc<dyn Filter>, BuildError> {
    if !options.is_empty() {
        return Err(BuildError(crate::policy::no_options(
            options,
            path,
            "unknown option: the dlp filter is configured in [dlp]",
        )));
    }
    Ok(Arc::new(DlpFilter::new(policy.dlp, shared)?))
}
