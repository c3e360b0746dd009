//! What Sluice does to the messages an MCP server sends back, in a JSON answer or in SSE
//! events: `tools/list` results filtered to the caller's tools, and every result and
//! server-sent request or notification scanned by DLP as an answer (through the chain, so the
//! `dlp` filter's own scanner, actions and metrics apply).
//!
//! An SSE answer is framed as it arrives ([`crate::sse::SseFramer`]): an event split across
//! reads is held until its blank line, then governed whole and passed on, its `id:` and
//! `event:` lines kept (resumption with `Last-Event-ID` still works).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use sluice_filters::mcp::{self, Kind, Message, ToolAccess};
use sluice_filters::{Cx, JsonBody};

use crate::chain::Chain;

/// What a governed message turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Governed {
    /// Unchanged.
    Same,
    /// Rewritten (filtered, redacted, or a result replaced on a block).
    Changed,
    /// Withheld whole (a server request or notification DLP blocked).
    Dropped,
}

/// The request an answer belongs to, and who asked.
pub struct Governor<'a> {
    pub chain: &'a Chain,
    pub server: &'a str,
    /// The `method` of the client's request (`tools/list` answers are filtered).
    pub method: Option<&'a str>,
    pub access: Option<ToolAccess<'a>>,
    /// The tool names a `tools/list` answer held (for the metrics' label set).
    pub listed: Vec<String>,
    /// A result was replaced because DLP blocked it.
    pub blocked: bool,
    /// A JSON-RPC response passed: the client has its answer (a client that leaves after it
    /// has not cut the exchange short).
    pub answered: bool,
}

impl Governor<'_> {
    /// Governs one server message in place.
    pub fn message(&mut self, msg: &mut Value, cx: &mut Cx) -> Governed {
        let kind = match Message::read(msg) {
            Ok(m) => m.kind,
            // Not JSON-RPC: still scanned whole, as an answer.
            Err(_) => return self.scan(msg, cx, true),
        };
        let mut changed = false;
        self.answered |= kind == Kind::Response;
        if kind == Kind::Response && self.method == Some("tools/list") {
            if let Some(result) = msg.get_mut("result") {
                let access = self.access;
                let before = result.clone();
                let listed = mcp::filter_tools_list(result, |t| {
                    access.is_none_or(|a| a.allows(self.server, t))
                });
                self.listed.extend(listed);
                changed = *result != before;
            }
        }
        let Some(obj) = msg.as_object_mut() else {
            return Governed::Same;
        };
        let Some(part) = mcp::answer_part(obj) else {
            return if changed {
                Governed::Changed
            } else {
                Governed::Same
            };
        };
        match self.scan(part, cx, kind == Kind::Response) {
            Governed::Same if changed => Governed::Changed,
            g => g,
        }
    }

    /// Scans `part` as an answer. A block replaces a result with an error result
    /// ([`mcp::McpApi`]), and withholds anything else.
    fn scan(&mut self, part: &mut Value, cx: &mut Cx, is_result: bool) -> Governed {
        let blocks_before = blocks(cx);
        let raw = Bytes::from(part.to_string());
        let mut body = JsonBody::parsed(raw, std::mem::take(part));
        self.chain.on_response_body(&mut body, cx);
        let changed = body.is_changed();
        *part = match body.json() {
            Some(v) => v.clone(),
            // The filter replaced the body with one that is not JSON (it could not scan it):
            // deliver none of the original.
            None => mcp::blocked_result(),
        };
        if blocks(cx) > blocks_before {
            if !is_result {
                return Governed::Dropped;
            }
            self.blocked = true;
            *part = mcp::blocked_result();
            return Governed::Changed;
        }
        if changed {
            Governed::Changed
        } else {
            Governed::Same
        }
    }
}

/// How many response-side blocks DLP recorded so far.
fn blocks(cx: &Cx) -> u32 {
    cx.dlp
        .iter()
        .filter(|f| f.direction == "response" && f.action == "block")
        .map(|f| f.count)
        .sum()
}

/// An SSE event rebuilt around a new `data` payload, every other line kept.
pub fn rebuild_event(raw: &[u8], data: &Value) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len() + 16);
    let mut wrote_data = false;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with(b"data") {
            if !wrote_data {
                out.put_slice(b"data: ");
                out.put_slice(data.to_string().as_bytes());
                out.put_u8(b'\n');
                wrote_data = true;
            }
            continue;
        }
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Parses a JSON-RPC message (a JSON object) from an answer's or event's bytes.
pub fn parse_object(bytes: &[u8]) -> Option<Value> {
    match sluice_filters::strict_json::parse(bytes) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rebuilt_events_keep_their_other_lines() {
        let raw = b"event: message\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\n";
        let out = rebuild_event(raw, &json!({"a": 2}));
        assert_eq!(&out[..], b"event: message\nid: 7\ndata: {\"a\":2}\n\n");
        let multi = b"data: {\"a\":\ndata: 1}\n\n";
        assert_eq!(
            &rebuild_event(multi, &json!({"a": 3}))[..],
            b"data: {\"a\":3}\n\n"
        );
    }
}
