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
mod pack_actions;
mod redact;
mod scanner;
mod scrub;
mod secrets;
mod section;
mod settings;
mod stream;
pub mod tokens;
pub mod validate;
mod vocabulary;
mod words;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{IntCounterVec, Opts};
use serde_json::Value;

use crate::api::{Api, ErrorInfo};
use crate::config::{ConfigErrors, Section};
use crate::policy::Policy;
use crate::{
    Cx, Filter, JsonBody, Needs, Reply, Request, ResponseHead, Shared, StreamEvent, Verdict,
};

pub use allow::AllowSettings;
pub use detectors::builtin_names;
pub use pack_actions::PackActions;
pub use scanner::{Match, Scanner, MAX_MATCH_BYTES};
pub use scrub::FieldScrubber;
#[doc(hidden)]
pub use section::compiles_on_this_thread;
pub use section::Dlp;
pub use settings::{Action, Direction, DlpSettings, RuleSettings, UNSCANNABLE};

use json::JsonScan;
use stream::StreamState;

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
    /// The upstream said the answer is JSON: one that does not parse cannot be scanned as the
    /// decoded strings it would hold (`\u0041KIA…`), so it is not forwarded (SPEC §9).
    declared_json: bool,
}

impl DlpFilter {
    /// Builds the filter from `[dlp]`; registers its metric in `shared` (once per process).
    pub fn new(settings: &DlpSettings, shared: &Shared) -> Result<DlpFilter, ConfigErrors> {
        let dlp = settings.build()?;
        Ok(DlpFilter::of(&dlp, shared))
    }

    /// The filter over a built `[dlp]` (its scanner shared, not compiled again).
    pub fn of(dlp: &Dlp, shared: &Shared) -> DlpFilter {
        let scanner = dlp.scanner().clone();
        let request_actions = dlp.actions(Direction::Request).to_vec();
        let response_actions = dlp.actions(Direction::Response).to_vec();
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
        DlpFilter {
            scanner,
            request_actions,
            response_actions,
            max_scan_bytes: dlp.max_scan_bytes(),
            findings,
        }
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

    /// Records a request scan's findings (taken from `js`); the refusal when one of them
    /// blocks.
    fn record_request_scan(&self, js: &mut JsonScan<'_>, cx: &mut Cx) -> Option<Reply> {
        let found = std::mem::take(&mut js.found);
        let blocked = std::mem::take(&mut js.blocked);
        self.record(cx, Direction::Request, &found);
        (!blocked.is_empty()).then(|| self.blocked_reply(&blocked))
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
        if js.found.is_empty() {
            return None;
        }
        if let Some(r) = self.record_request_scan(&mut js, cx) {
            return Some(r.into());
        }
        // Recorded redacted whatever the action (monitor and mask included): the audit trail
        // never holds the value.
        let redact = vec![Action::Redact; actions.len()];
        let mut js = JsonScan::new(&self.scanner, &redact);
        cx.path = js.text(path).or(new).unwrap_or_else(|| path.to_string());
        None
    }

    /// Scans the query string like a body (SPEC §3), each parameter's name and value decoded
    /// (`%41KIA…` and `+` hide nothing): a `block` finding refuses the request; `redact` and
    /// `mask` replace [`Cx::query`] (what the engine forwards) with the rewritten parameters.
    fn scan_query(&self, cx: &mut Cx) -> Option<Verdict> {
        let query = cx.query.as_deref()?;
        let actions = self.actions(Direction::Request);
        let mut js = JsonScan::new(&self.scanner, actions).scan_past_blocks();
        let mut out = form_urlencoded::Serializer::new(String::new());
        let mut changed = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let (nk, nv) = (js.text(&k), js.text(&v));
            changed |= nk.is_some() || nv.is_some();
            out.append_pair(nk.as_deref().unwrap_or(&k), nv.as_deref().unwrap_or(&v));
        }
        if js.found.is_empty() {
            return None;
        }
        if let Some(r) = self.record_request_scan(&mut js, cx) {
            return Some(r.into());
        }
        if changed {
            cx.query = Some(out.finish());
        }
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
    fn scan_response(&self, body: &mut JsonBody, declared_json: bool, cx: &mut Cx) {
        if json::document_is_clean(&self.scanner, body) {
            // Nothing to redact, and the document need not be built.
            return;
        }
        if declared_json && body.json().is_none() {
            let msg = self.unscannable(
                cx,
                Direction::Response,
                "it is declared JSON but does not parse",
            );
            body.set_raw(cx.api.error_body(&Self::unscannable_error(&msg)));
            return;
        }
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
        if let Some(v) = self.scan_query(cx) {
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
        if json::document_is_clean(&self.scanner, req.body) {
            return Verdict::Continue;
        }
        let actions = self.actions(Direction::Request);
        // A blocked request is refused whole: scan all of it, to name every detector.
        let mut js = JsonScan::new(&self.scanner, actions).scan_past_blocks();
        let new_json = req.body.json().and_then(|v| js.value(v));
        let new_raw = match req.body.json() {
            None => js.bytes(req.body.bytes()),
            Some(_) => None,
        };
        if let Some(r) = self.record_request_scan(&mut js, cx) {
            return r.into();
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
        // Error bodies are scanned like answers (an upstream may echo the prompt in one).
        // The engine refuses (502) a compressed body it was asked to scan before this runs;
        // an embedder's engine might not, so the state is kept to fail closed here too.
        let unreadable_encoding = content_encoding(resp.headers);
        // One JSON document (`application/json`, `…+json`), not JSON lines and the like.
        let declared_json = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
        if unreadable_encoding.is_some() || declared_json {
            cx.extensions.insert(ResponseState {
                unreadable_encoding,
                declared_json,
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
            let declared_json = cx
                .extensions
                .get::<ResponseState>()
                .is_some_and(|s| s.declared_json);
            self.scan_response(body, declared_json, cx);
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
) -> Result<Arc<dyn Filter>, ConfigErrors> {
    if !options.is_empty() {
        return Err(ConfigErrors(crate::config::no_options(
            options,
            path,
            "unknown option: the dlp filter is configured in [dlp]",
        )));
    }
    let dlp = policy.sections.built::<DlpSettings>(path)?;
    Ok(Arc::new(DlpFilter::of(&dlp, shared)))
}
