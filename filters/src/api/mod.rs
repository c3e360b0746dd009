//! The APIs Sluice governs, one module each, behind one trait: [`Api`].
//!
//! Every provider's JSON shape is known here and nowhere else. An [`Api`] says how to read the
//! model, stream flag and token ceiling of a request ([`RequestFacts`]), how to estimate its
//! prompt, how usage is read from an answer and from stream events, how the text of a stream
//! is keyed ([`DeltaKey`]: choice and tool call; item and content index; content block index),
//! how an answer or a stream is ended when DLP blocks it, and how errors are rendered.
//!
//! Filters see only this normalized model: they ask [`crate::Cx::api`] and never read
//! `choices`, `delta`, `output` or `content_block_delta` themselves. Adding an API is one module
//! here (its shape and its [`ApiRoute`]) and one registration in [`GOVERNED`].

pub mod chat;
mod choices;
pub mod completions;
pub mod embeddings;
pub mod estimate;
mod fields;
mod finish;
pub mod messages;
pub mod moderations;
pub mod passthrough;
pub mod responses;
mod route;

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::{JsonBody, Reply, StreamEvent, Usage};

pub use choices::ChoicesApi;
pub use embeddings::Embeddings;
pub(crate) use fields::{input_request, read_ceiling, read_choices, read_model, read_stream};
pub use finish::{FinishReasons, MAX_REASONS};
pub use messages::{CountTokens, Messages};
pub use passthrough::Passthrough;
pub use responses::Responses;
pub use route::{ApiRoute, Models};

/// The OpenAI chat completions API.
pub static CHAT: ChoicesApi = chat::API;
/// The OpenAI Responses API.
pub static RESPONSES: Responses = Responses;
/// The OpenAI legacy completions API.
pub static COMPLETIONS: ChoicesApi = completions::API;
/// The OpenAI embeddings API.
pub static EMBEDDINGS: Embeddings = Embeddings;
/// Anthropic's Messages API.
pub static MESSAGES: Messages = Messages;
/// Anthropic's token counting (`/v1/messages/count_tokens`).
pub static COUNT_TOKENS: CountTokens = CountTokens;
/// Any other `/v1/*` endpoint.
pub static PASSTHROUGH: Passthrough = Passthrough;

/// The governed API routes, one registration each: the engine's route table matches them,
/// RBAC, metrics, traces and usage rows read their [`ApiRoute`].
pub static GOVERNED: &[&ApiRoute] = &[
    &chat::ROUTE,
    &responses::ROUTE,
    &completions::ROUTE,
    &embeddings::ROUTE,
    &messages::ROUTE,
    &messages::COUNT_TOKENS_ROUTE,
    &moderations::ROUTE,
];

/// What a request's body says, read by its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// The model the client asked for.
    pub model: Option<String>,
    pub stream: bool,
    /// The client itself asked for usage in a stream (`stream_options.include_usage`).
    pub client_wants_stream_usage: bool,
    /// The route's output ceiling (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    pub max_tokens: Option<u64>,
    /// How many answers the request asks for (`n`), at least 1.
    pub choices: u64,
}

impl Default for RequestFacts {
    fn default() -> Self {
        RequestFacts {
            model: None,
            stream: false,
            client_wants_stream_usage: false,
            max_tokens: None,
            choices: 1,
        }
    }
}

/// What a request may cost in tokens, for the rate limiter's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCost {
    /// The prompt plus `choices ×` the output ceiling.
    Generation,
    /// The prompt only (embeddings).
    PromptOnly,
    /// Nothing (token counting).
    Free,
}

/// Which piece of streamed text a delta belongs to. Deltas with the same key are one text,
/// scanned as it grows; `group` is what a `block` ends (a choice; for APIs whose answer ends
/// whole, every group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeltaKey {
    /// The choice, output item or content block.
    pub group: u64,
    /// The tool call, content part or summary within the group.
    pub part: u64,
    /// Which text field of the group (content, refusal, reasoning, arguments …), per API.
    pub field: u8,
}

/// Where a delta's text sits in its event, as its API locates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// The string's bytes (between its quotes) in the event's `data`, escape-free.
    Span(usize, usize),
    /// An API-defined position in the parsed document.
    Path(u32, u32, u32),
}

/// One piece of streamed text.
#[derive(Debug, Clone)]
pub struct Delta<'e> {
    pub key: DeltaKey,
    pub text: Cow<'e, str>,
    pub at: Loc,
}

/// What an event finishes: after it, no more text arrives for these keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Key(DeltaKey),
    Group(u64),
    All,
}

impl Finish {
    pub fn covers(self, key: DeltaKey) -> bool {
        match self {
            Finish::Key(k) => k == key,
            Finish::Group(g) => g == key.group,
            Finish::All => true,
        }
    }
}

/// A stream event as its API reads it.
#[derive(Debug, Clone, Default)]
pub struct EventView<'e> {
    pub deltas: Vec<Delta<'e>>,
    pub finishes: Vec<Finish>,
    /// The event carries text that is not a delta (a `*.done` event repeating the whole text,
    /// a block's start, an unknown event): every string of it is scanned as a whole.
    pub scan_whole: bool,
    /// The group a block in the whole-scanned text ends (`None`: the whole answer).
    pub group: Option<u64>,
}

impl EventView<'_> {
    /// An event read as a whole: no deltas known, every string of it scanned.
    pub fn whole() -> Self {
        EventView {
            scan_whole: true,
            ..EventView::default()
        }
    }
}

/// An event's data and its head (the few fields that say what it is), or `None` when it has
/// no data or its data is not that head: then the event is scanned whole.
pub(crate) fn read_head<'e, H: serde::Deserialize<'e>>(
    ev: &'e StreamEvent,
) -> Option<(&'e [u8], H)> {
    let data = ev.data()?;
    let head = serde_json::from_slice::<H>(data).ok()?;
    Some((data, head))
}

/// What a `block` in an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockScope {
    /// Only the group (chat: that choice; the others go on).
    Group,
    /// The whole answer.
    Whole,
}

/// Usage an event reports; an API may report prompt and completion in separate events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsagePart {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Prompt tokens served from the upstream's cache (counted in `prompt_tokens` too).
    pub cached_tokens: Option<u64>,
}

impl UsagePart {
    pub fn is_empty(&self) -> bool {
        self.prompt_tokens.is_none() && self.completion_tokens.is_none()
    }

    /// Merges into what is known so far.
    pub fn merge_into(self, usage: &mut Option<Usage>) {
        if self.is_empty() {
            return;
        }
        let u = usage.get_or_insert_with(Usage::default);
        if let Some(p) = self.prompt_tokens {
            u.prompt_tokens = p;
        }
        if let Some(c) = self.completion_tokens {
            u.completion_tokens = c;
        }
        if let Some(c) = self.cached_tokens {
            u.cached_prompt_tokens = c;
        }
    }
}

/// An error as Sluice reports it, before an API renders it in its own shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub status: u16,
    /// OpenAI's `type` (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// Sluice's code (`invalid_api_key`, `dlp_blocked`, …).
    pub code: &'static str,
    pub message: String,
    /// The request field the error is about, when there is one.
    pub param: Option<String>,
}

/// Per-stream memory an API keeps in the caller's state (the identifying fields of the first
/// chunk, item ids …), to build the events it adds.
pub type Memo = Map<String, Value>;

/// One API's shape.
pub trait Api: Send + Sync + 'static {
    /// A short stable name (`chat`, `responses`, …).
    fn name(&self) -> &'static str;

    // ---- requests ----

    /// Whether the route's body must be a JSON object.
    fn needs_json(&self) -> bool {
        true
    }

    /// Reads what the route needs from a JSON request body; `Err` is the 400 to answer.
    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply>;

    /// Prepares a request for the upstream: the upstream's own model name, and asking for usage
    /// in streams where the API needs to be asked.
    fn prepare_upstream(
        &self,
        body: &mut Map<String, Value>,
        facts: &RequestFacts,
        upstream_model: Option<&str>,
    ) {
        let _ = facts;
        if let Some(m) = upstream_model {
            body.insert("model".into(), Value::String(m.to_string()));
        }
    }

    /// Whether [`Api::prepare_upstream`] would change the body.
    fn rewrites_upstream(&self, facts: &RequestFacts, upstream_model: Option<&str>) -> bool {
        let _ = facts;
        upstream_model.is_some()
    }

    /// The estimated prompt tokens of a request.
    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        estimate::every_string(body)
    }

    fn token_cost(&self) -> TokenCost {
        TokenCost::Generation
    }

    // ---- answers ----

    /// Whether a non-streamed answer carries text to scan.
    fn scans_answer(&self) -> bool {
        true
    }

    /// The usage an answer reports, from its top-level `usage` object.
    fn usage(&self, usage: &Value) -> Option<Usage> {
        usage_any(usage)
    }

    /// Why the model stopped, read from a whole answer's bytes (traces only).
    fn finish_reasons(&self, answer: &[u8], out: &mut FinishReasons) {
        let _ = (answer, out);
    }

    /// Why the model stopped, from a stream event that says so (traces only).
    fn stream_finish_reasons(&self, ev: &StreamEvent, out: &mut FinishReasons) {
        let _ = (ev, out);
    }

    /// The top-level array of an answer whose elements a block ends separately (`choices`);
    /// `None`: a block ends the whole answer.
    fn answer_groups(&self) -> Option<&'static str> {
        None
    }

    /// Ends an answer (or one of its groups) on a block. `held_block` tells whether a value
    /// held blocked data, for parts withheld whole (tool calls whose arguments were cut).
    fn end_answer(&self, target: &mut Value, held_block: &dyn Fn(&Value) -> bool) {
        let _ = (target, held_block);
    }

    // ---- streams ----

    /// Reads usage from a stream event; may hide a usage event the client did not ask for
    /// (returns false: drop the event).
    fn stream_usage(
        &self,
        ev: &mut StreamEvent,
        client_asked: bool,
        usage: &mut Option<Usage>,
    ) -> bool {
        let _ = client_asked;
        if let Some(part) = ev.json().and_then(usage_part_any) {
            part.merge_into(usage);
        }
        true
    }

    /// Splits an event into keyed deltas and what it finishes.
    fn read_event<'e>(&self, ev: &'e StreamEvent, memo: &mut Memo) -> EventView<'e> {
        let _ = memo;
        EventView {
            scan_whole: !ev.is_done(),
            ..EventView::default()
        }
    }

    /// Replaces a delta's text in its event.
    fn write_delta(&self, ev: &mut StreamEvent, at: Loc, text: &str) {
        let _ = (ev, at, text);
    }

    /// A new event carrying `text` for `key` (text held back, released at the key's end).
    fn delta_event(&self, key: DeltaKey, text: &str, memo: &Memo) -> Option<StreamEvent> {
        let _ = (key, text, memo);
        None
    }

    fn block_scope(&self) -> BlockScope {
        BlockScope::Whole
    }

    /// Ends the answer (or `group`) on a block: rewrites `ev`, the event the block was found
    /// in (when there is one), and appends the events that end the stream to `out`.
    fn end_stream(
        &self,
        ev: Option<&mut StreamEvent>,
        group: Option<u64>,
        memo: &Memo,
        out: &mut Vec<StreamEvent>,
    ) {
        let _ = (ev, group, memo);
        out.push(self.stream_error_event(&ErrorInfo {
            status: 400,
            kind: "dlp_violation",
            code: "dlp_blocked",
            message: "The answer was blocked by DLP.".into(),
            param: None,
        }));
    }

    /// Removes what an event says for groups a block ended; false when nothing of it is left
    /// to send.
    fn withhold(&self, ev: &mut StreamEvent, closed: &[u64]) -> bool {
        let _ = (ev, closed);
        false
    }

    /// Whether an event still goes to the client after the whole answer was ended on a block.
    fn passes_after_end(&self, ev: &StreamEvent) -> bool {
        let _ = ev;
        false
    }

    // ---- errors ----

    /// An error body in this API's shape.
    fn error_body(&self, e: &ErrorInfo) -> Bytes {
        openai_error(e)
    }

    /// The event that ends a stream that failed after it started.
    fn stream_error_event(&self, e: &ErrorInfo) -> StreamEvent {
        StreamEvent::json_event(openai_error_value(e))
    }
}

/// OpenAI's error shape: `{"error":{"message","type","code","param":null}}`.
pub fn openai_error_value(e: &ErrorInfo) -> Value {
    json!({"error": {"message": e.message, "type": e.kind, "code": e.code, "param": e.param}})
}

pub fn openai_error(e: &ErrorInfo) -> Bytes {
    Bytes::from(openai_error_value(e).to_string())
}

/// Usage in any of the shapes the governed APIs use: `prompt_tokens`/`completion_tokens`
/// (OpenAI chat, completions, embeddings) or `input_tokens`/`output_tokens` (Responses,
/// Anthropic).
pub fn usage_any(v: &Value) -> Option<Usage> {
    let mut u = None;
    usage_part(v)?.merge_into(&mut u);
    u
}

fn usage_part(v: &Value) -> Option<UsagePart> {
    let obj = v.as_object()?;
    let get = |a: &str, b: &str| obj.get(a).or_else(|| obj.get(b)).and_then(Value::as_u64);
    let mut prompt = get("prompt_tokens", "input_tokens");
    // Anthropic's `input_tokens` leaves out the tokens read from its cache: they are prompt
    // tokens too (as in OpenAI's `prompt_tokens`).
    let anthropic_cached = obj.get("cache_read_input_tokens").and_then(Value::as_u64);
    if let (Some(p), Some(c)) = (prompt.as_mut(), anthropic_cached) {
        *p = p.saturating_add(c);
    }
    let part = UsagePart {
        prompt_tokens: prompt,
        completion_tokens: get("completion_tokens", "output_tokens"),
        cached_tokens: prompt.and(cached_prompt_tokens(obj)),
    };
    (!part.is_empty()).then_some(part)
}

/// The cached prompt tokens a usage object reports: OpenAI's
/// `prompt_tokens_details.cached_tokens`, Responses' `input_tokens_details.cached_tokens`,
/// Anthropic's `cache_read_input_tokens`.
pub(crate) fn cached_prompt_tokens(obj: &serde_json::Map<String, Value>) -> Option<u64> {
    let detail = |k: &str| obj.get(k).and_then(|d| d.get("cached_tokens"));
    detail("prompt_tokens_details")
        .or_else(|| detail("input_tokens_details"))
        .or_else(|| obj.get("cache_read_input_tokens"))
        .and_then(Value::as_u64)
}

/// Usage found anywhere an event of a known shape carries it: `usage`, `response.usage`,
/// `message.usage`.
pub fn usage_part_any(v: &Value) -> Option<UsagePart> {
    v.get("usage")
        .or_else(|| v.pointer("/response/usage"))
        .or_else(|| v.pointer("/message/usage"))
        .and_then(usage_part)
}

/// Replaces the string at the bytes `start..end` of an event's `data` (an escape-free string
/// between its quotes, see [`Loc::Span`]) with `text`, keeping every other byte of the event.
pub(crate) fn splice(ev: &mut StreamEvent, start: usize, end: usize, text: &str) {
    let Some((ds, de)) = ev.data_span() else {
        return;
    };
    let raw = ev.raw().clone();
    let data = &raw[ds..de];
    if start == 0 || end >= data.len() || data[start - 1] != b'"' || data[end] != b'"' {
        return;
    }
    let mut out = Vec::with_capacity(raw.len() + text.len() + 8);
    out.extend_from_slice(&raw[..ds + start - 1]);
    // Serializing a string cannot fail.
    let _ = serde_json::to_writer(&mut out, text);
    out.extend_from_slice(&raw[ds + end + 1..de]);
    let data_end = out.len();
    out.extend_from_slice(&raw[de..]);
    let raw = Bytes::from(out);
    let data = raw.slice(ds..data_end);
    *ev = StreamEvent::lazy(raw, Some(data));
}

/// The offsets of a borrowed string inside `data`, when it was borrowed from it.
pub(crate) fn span_of(data: &[u8], s: &str) -> Option<(usize, usize)> {
    let start = (s.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let end = start + s.len();
    (start > 0 && end < data.len() && data[start - 1] == b'"' && data[end] == b'"')
        .then_some((start, end))
}

#[cfg(test)]
mod tests;
