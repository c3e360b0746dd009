//! OpenAI chat completions (`POST /v1/chat/completions`).

use serde_json::{Map, Value};

use super::choices::{self, Shape};
use super::{
    estimate, read_ceiling, read_choices, read_model, read_stream, Api, BlockScope, DeltaKey,
    EventView, Loc, Memo, RequestFacts,
};
use crate::{JsonBody, Reply, StreamEvent, Usage};

pub struct Chat;

impl Api for Chat {
    fn name(&self) -> &'static str {
        "chat"
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        let model = read_model(body, true)?;
        if !body.get("messages").is_some_and(Value::is_array) {
            return Err(Reply::error(
                400,
                "missing_messages",
                "The request needs `messages` (an array).",
            ));
        }
        Ok(RequestFacts {
            model,
            stream: read_stream(body)?,
            client_wants_stream_usage: choices::client_wants_stream_usage(body),
            max_tokens: read_ceiling(body, &["max_completion_tokens", "max_tokens"])?,
            choices: read_choices(body),
        })
    }

    fn prepare_upstream(
        &self,
        body: &mut Map<String, Value>,
        facts: &RequestFacts,
        upstream_model: Option<&str>,
    ) {
        if let Some(m) = upstream_model {
            body.insert("model".into(), Value::String(m.to_string()));
        }
        choices::ask_stream_usage(body, facts);
    }

    fn rewrites_upstream(&self, facts: &RequestFacts, upstream_model: Option<&str>) -> bool {
        upstream_model.is_some() || (facts.stream && !facts.client_wants_stream_usage)
    }

    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        estimate::chat(body)
    }

    fn answer_groups(&self) -> Option<&'static str> {
        Some("choices")
    }

    fn end_answer(&self, choice: &mut Value, held_block: &dyn Fn(&Value) -> bool) {
        choices::end_answer(choice, held_block);
    }

    fn stream_usage(
        &self,
        ev: &mut StreamEvent,
        client_asked: bool,
        usage: &mut Option<Usage>,
    ) -> bool {
        choices::stream_usage(ev, client_asked, usage)
    }

    fn finish_reasons(&self, answer: &[u8], out: &mut super::FinishReasons) {
        super::finish::choices_answer(answer, out);
    }

    fn stream_finish_reasons(&self, ev: &StreamEvent, out: &mut super::FinishReasons) {
        super::finish::choices_event(ev, out);
    }

    fn read_event<'e>(&self, ev: &'e StreamEvent, memo: &mut Memo) -> EventView<'e> {
        choices::read_event(Shape::Chat, ev, memo)
    }

    fn write_delta(&self, ev: &mut StreamEvent, at: Loc, text: &str) {
        choices::write_delta(Shape::Chat, ev, at, text);
    }

    fn delta_event(&self, key: DeltaKey, text: &str, memo: &Memo) -> Option<StreamEvent> {
        Some(choices::delta_event(Shape::Chat, key, text, memo))
    }

    fn block_scope(&self) -> BlockScope {
        BlockScope::Group
    }

    fn end_stream(
        &self,
        ev: Option<&mut StreamEvent>,
        group: Option<u64>,
        memo: &Memo,
        out: &mut Vec<StreamEvent>,
    ) {
        choices::end_stream(Shape::Chat, ev, group, memo, out);
    }

    fn withhold(&self, ev: &mut StreamEvent, closed: &[u64]) -> bool {
        choices::withhold(ev, closed)
    }

    fn passes_after_end(&self, ev: &StreamEvent) -> bool {
        ev.is_done()
    }
}
