//! OpenAI's Responses API (`POST /v1/responses`), which the Agents SDK and Codex speak.
//!
//! A stream is typed events (`event: response.output_text.delta` …, each `data` with its
//! `type`). Text arrives in delta events keyed by `output_index` and `content_index` (or
//! `summary_index`); `*.done`, `response.content_part.done`, `response.output_item.done` and
//! `response.completed` repeat the whole text, and are scanned whole, so they carry the text the
//! deltas spelled. A block ends the whole response with `response.incomplete`
//! (`incomplete_details.reason = "content_filter"`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    estimate, read_ceiling, read_head, read_model, read_stream, span_of, splice, Api, ApiRoute,
    BlockScope, Delta, DeltaKey, EventView, Finish, Loc, Memo, Models, RequestFacts,
};
use crate::{JsonBody, Permission, Reply, StreamEvent};

/// `POST /v1/responses`.
pub static ROUTE: ApiRoute = ApiRoute {
    path: "responses",
    post_only: true,
    label: "responses",
    api: &super::RESPONSES,
    permission: Permission::Chat,
    action: "create chat completions",
    models: Models::Required,
    operation: Some("chat"),
    anthropic: false,
    usage_row: true,
};

pub struct Responses;

/// [`DeltaKey::field`]s, with the delta event type that carries each.
const DELTA_TYPES: [&str; 6] = [
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.custom_tool_call_input.delta",
];
const TEXT: u8 = 0;
const REFUSAL: u8 = 1;
const ARGS: u8 = 2;
const SUMMARY: u8 = 3;
const REASONING: u8 = 4;
const CUSTOM_INPUT: u8 = 5;

impl Api for Responses {
    fn name(&self) -> &'static str {
        "responses"
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        Ok(RequestFacts {
            model: read_model(body, true)?,
            stream: read_stream(body)?,
            client_wants_stream_usage: true,
            max_tokens: read_ceiling(body, &["max_output_tokens"])?,
            choices: 1,
        })
    }

    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        estimate::chat(body)
    }

    fn end_answer(&self, answer: &mut Value, held_block: &dyn Fn(&Value) -> bool) {
        let Some(doc) = answer.as_object_mut() else {
            return;
        };
        if let Some(Value::Array(items)) = doc.get_mut("output") {
            // A function call whose arguments were cut is of no use: withheld whole.
            items.retain(|i| {
                let call = i
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("_call"));
                !(call && held_block(i))
            });
        }
        doc.insert("status".into(), json!("incomplete"));
        doc.insert(
            "incomplete_details".into(),
            json!({"reason": "content_filter"}),
        );
    }

    fn finish_reasons(&self, answer: &[u8], out: &mut super::FinishReasons) {
        super::finish::status_answer(answer, out);
    }

    fn stream_finish_reasons(&self, ev: &StreamEvent, out: &mut super::FinishReasons) {
        super::finish::status_event(ev, out);
    }

    fn read_event<'e>(&self, ev: &'e StreamEvent, memo: &mut Memo) -> EventView<'e> {
        let whole = EventView::whole();
        let Some((data, head)) = read_head::<Head<'_>>(ev) else {
            return whole;
        };
        if let Some(n) = head.sequence_number {
            memo.insert("seq".into(), json!(n));
        }
        let o = head.output_index.unwrap_or(0);
        let c = head.content_index.unwrap_or(0);
        let key = |part: u64, field: u8| DeltaKey {
            group: o,
            part,
            field,
        };
        if let Some(f) = DELTA_TYPES.iter().position(|t| *t == head.kind) {
            let f = f as u8;
            let part = if f == SUMMARY {
                head.summary_index.unwrap_or(0)
            } else if f == ARGS || f == CUSTOM_INPUT {
                0
            } else {
                c
            };
            if let Some(id) = head.item_id.as_deref() {
                remember_item(memo, o, id);
            }
            let Some(text) = head.delta else {
                return whole;
            };
            let at = match (&text, ev.data_span()) {
                (Cow::Borrowed(s), Some(_)) => match span_of(data, s) {
                    Some((a, b)) => Loc::Span(a, b),
                    None => Loc::Path(0, 0, 0),
                },
                _ => Loc::Path(0, 0, 0),
            };
            return EventView {
                deltas: vec![Delta {
                    key: key(part, f),
                    text,
                    at,
                }],
                ..EventView::default()
            };
        }
        let finishes = match head.kind {
            "response.output_text.done" => vec![Finish::Key(key(c, TEXT))],
            "response.refusal.done" => vec![Finish::Key(key(c, REFUSAL))],
            "response.content_part.done" => {
                vec![Finish::Key(key(c, TEXT)), Finish::Key(key(c, REFUSAL))]
            }
            "response.function_call_arguments.done" => vec![Finish::Key(key(0, ARGS))],
            "response.custom_tool_call_input.done" => vec![Finish::Key(key(0, CUSTOM_INPUT))],
            "response.reasoning_summary_text.done" | "response.reasoning_summary_part.done" => {
                vec![Finish::Key(key(head.summary_index.unwrap_or(0), SUMMARY))]
            }
            "response.reasoning_text.done" => vec![Finish::Key(key(c, REASONING))],
            "response.output_item.done" => vec![Finish::Group(o)],
            "response.completed" | "response.incomplete" | "response.failed" => {
                vec![Finish::All]
            }
            "response.created" | "response.in_progress" | "response.queued" => {
                remember_response(memo, ev);
                Vec::new()
            }
            _ => Vec::new(),
        };
        EventView { finishes, ..whole }
    }

    fn write_delta(&self, ev: &mut StreamEvent, at: Loc, text: &str) {
        match at {
            Loc::Span(s, e) => splice(ev, s, e, text),
            Loc::Path(..) => {
                if let Some(v) = ev.json_mut().and_then(|v| v.get_mut("delta")) {
                    *v = Value::String(text.to_string());
                }
            }
        }
    }

    fn delta_event(&self, key: DeltaKey, text: &str, memo: &Memo) -> Option<StreamEvent> {
        let kind = *DELTA_TYPES.get(usize::from(key.field))?;
        let item_id = memo
            .get("items")
            .and_then(|i| i.get(key.group as usize))
            .cloned()
            .unwrap_or(Value::Null);
        let mut v = json!({
            "type": kind,
            "item_id": item_id,
            "output_index": key.group,
            "delta": text,
            "sequence_number": memo.get("seq").cloned().unwrap_or(json!(0)),
        });
        match key.field {
            SUMMARY => v["summary_index"] = json!(key.part),
            ARGS | CUSTOM_INPUT => {}
            _ => v["content_index"] = json!(key.part),
        }
        if key.field == TEXT {
            v["logprobs"] = json!([]);
        }
        Some(StreamEvent::named_json_event(kind, v))
    }

    fn block_scope(&self) -> BlockScope {
        BlockScope::Whole
    }

    fn end_stream(
        &self,
        _ev: Option<&mut StreamEvent>,
        _group: Option<u64>,
        memo: &Memo,
        out: &mut Vec<StreamEvent>,
    ) {
        let mut response = memo.get("response").cloned().unwrap_or_else(|| json!({}));
        if let Some(r) = response.as_object_mut() {
            // Left out, a client builds the output from the deltas it received: the text up to
            // the block, never the withheld rest.
            r.remove("output");
            r.remove("output_text");
            r.insert("status".into(), json!("incomplete"));
            r.insert(
                "incomplete_details".into(),
                json!({"reason": "content_filter"}),
            );
        }
        let v = json!({
            "type": "response.incomplete",
            "sequence_number": memo.get("seq").cloned().unwrap_or(json!(0)),
            "response": response,
        });
        out.push(StreamEvent::named_json_event("response.incomplete", v));
    }
}

/// The fields of an event that say what it is and where its delta goes.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    sequence_number: Option<u64>,
    output_index: Option<u64>,
    content_index: Option<u64>,
    summary_index: Option<u64>,
    #[serde(borrow)]
    item_id: Option<Cow<'a, str>>,
    /// Borrowed when it holds no escapes, so a changed text can be spliced in place.
    #[serde(borrow)]
    delta: Option<Cow<'a, str>>,
}

fn remember_item(memo: &mut Memo, output_index: u64, id: &str) {
    let Ok(i) = usize::try_from(output_index) else {
        return;
    };
    if i > 4096 {
        return;
    }
    let items = memo.entry("items").or_insert_with(|| json!([]));
    let Some(items) = items.as_array_mut() else {
        return;
    };
    if items.len() <= i {
        items.resize(i + 1, Value::Null);
    }
    if items[i].is_null() {
        items[i] = Value::String(id.to_string());
    }
}

fn remember_response(memo: &mut Memo, ev: &StreamEvent) {
    if let Some(r) = ev.json().and_then(|v| v.get("response")) {
        memo.insert("response".into(), r.clone());
    }
}
