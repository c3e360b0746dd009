//! MCP (Model Context Protocol) messages, as the governed route `/mcp/{server}` sees them.
//!
//! This module knows JSON-RPC 2.0 and MCP's method names and result shapes, and nothing about
//! transports: the engine (`src/mcp/`) frames HTTP and SSE and hands each message here.
//!
//! - [`Message`] reads what governance needs from one JSON-RPC message: its kind, `method`,
//!   `id`, and for `tools/call` the tool's name and `arguments` (the text DLP scans as a
//!   request).
//! - [`ToolAccess`] decides whether a caller may call `server:tool` (the role's `mcp` globs,
//!   narrowed by the key's own).
//! - [`filter_tools_list`] removes from a `tools/list` result the tools a caller may not call.
//! - [`McpApi`] is the route's [`Api`]: a tool result is an answer whose `block` replaces the
//!   whole result with an error result (`isError: true`), as MCP reports a failed tool call.
//! - [`McpCall`] is what the audit record says about the request (`mcp_method`, `tool`).

use serde_json::{json, Map, Value};

use crate::api::{Api, RequestFacts, TokenCost};
use crate::{glob_match, Reply};

/// The route's API.
pub static MCP: McpApi = McpApi;

/// JSON-RPC error code Sluice answers a refused `tools/call` with (the server-defined range).
pub const REFUSED_CODE: i64 = -32001;

/// Longest method or tool name kept for the audit record and metrics (both come from the
/// client).
pub const MAX_NAME_CHARS: usize = 128;

/// What the audit record says about an MCP request, set in [`crate::Cx::extensions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpCall {
    /// The JSON-RPC `method` (`initialize`, `tools/list`, `tools/call`, …), when the message
    /// is a request or notification.
    pub method: Option<String>,
    /// The tool of a `tools/call`.
    pub tool: Option<String>,
}

/// The kinds of JSON-RPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result` or `error`.
    Response,
}

/// One JSON-RPC message, read.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub kind: Kind,
    pub method: Option<&'a str>,
    pub id: Option<&'a Value>,
    pub params: Option<&'a Value>,
}

impl<'a> Message<'a> {
    /// Reads a JSON-RPC 2.0 message; `Err` says why it is not one.
    pub fn read(v: &'a Value) -> Result<Message<'a>, &'static str> {
        let obj = v.as_object().ok_or(
            "a JSON-RPC message must be a JSON object (batches are not part of MCP 2025-06-18)",
        )?;
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err("a JSON-RPC message needs \"jsonrpc\": \"2.0\"");
        }
        let id = obj.get("id").filter(|i| i.is_string() || i.is_number());
        let method = match obj.get("method") {
            Some(Value::String(m)) => Some(m.as_str()),
            Some(_) => return Err("`method` must be a string"),
            None => None,
        };
        let kind = match (method, id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
                Kind::Response
            }
            _ => return Err("not a JSON-RPC request, notification or response"),
        };
        Ok(Message {
            kind,
            method,
            id,
            params: obj.get("params"),
        })
    }

    /// The tool a `tools/call` names.
    pub fn tool(&self) -> Option<&'a str> {
        if self.method != Some("tools/call") {
            return None;
        }
        self.params?.get("name")?.as_str()
    }

    /// What the audit record says about it.
    pub fn audit(&self) -> McpCall {
        McpCall {
            method: self.method.map(bounded),
            tool: self.tool().map(bounded),
        }
    }
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_NAME_CHARS).collect()
}

/// Who may call which tool: the role's `mcp` globs over `server:tool`, narrowed by the key's
/// own (`None`: the key does not narrow). A key's globs never widen its role.
#[derive(Debug, Clone, Copy)]
pub struct ToolAccess<'a> {
    pub role: &'a [String],
    pub key: Option<&'a [String]>,
}

impl ToolAccess<'_> {
    pub fn allows(&self, server: &str, tool: &str) -> bool {
        let name = format!("{server}:{tool}");
        self.role.iter().any(|g| glob_match(g, &name))
            && self
                .key
                .is_none_or(|k| k.iter().any(|g| glob_match(g, &name)))
    }
}

/// Removes from a `tools/list` result the tools `allowed` refuses; returns how many were kept
/// and the names of every tool listed (kept or not: the metrics' label set).
pub fn filter_tools_list(result: &mut Value, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut listed = Vec::new();
    if let Some(Value::Array(tools)) = result.get_mut("tools") {
        tools.retain(|t| {
            let Some(name) = t.get("name").and_then(Value::as_str) else {
                return false;
            };
            listed.push(bounded(name));
            allowed(name)
        });
    }
    listed
}

/// A JSON-RPC error response to `id` with Sluice's refusal `data.type`.
pub fn refusal(id: Option<&Value>, kind: &str, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": REFUSED_CODE, "message": message, "data": {"type": kind}},
    })
}

/// The result that replaces a tool result DLP blocked: an error result, as MCP reports a
/// failed tool call, so that the model sees why.
pub fn blocked_result() -> Value {
    json!({
        "content": [{"type": "text", "text": "The tool result was blocked by DLP (data.type dlp_blocked); it was not delivered."}],
        "isError": true,
    })
}

/// The parts of a server message DLP scans as an answer: a response's `result` (tool results:
/// `content[]` text, `structuredContent`, resource contents), a request's or notification's
/// `params` (progress messages, sampling and elicitation requests).
pub fn answer_part(msg: &mut Map<String, Value>) -> Option<&mut Value> {
    if msg.contains_key("result") {
        msg.get_mut("result")
    } else {
        msg.get_mut("params")
    }
}

/// MCP's [`Api`]: the JSON-RPC message is not a model call, so there is no model, stream flag,
/// ceiling or token cost; a blocked answer becomes an error result.
pub struct McpApi;

impl Api for McpApi {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn read_request(&self, _body: &Value) -> Result<RequestFacts, Reply> {
        Ok(RequestFacts::default())
    }

    fn rewrites_upstream(&self, _facts: &RequestFacts, _upstream_model: Option<&str>) -> bool {
        false
    }

    fn token_cost(&self) -> TokenCost {
        TokenCost::Free
    }

    fn end_answer(&self, target: &mut Value, _held_block: &dyn Fn(&Value) -> bool) {
        *target = blocked_result();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_messages() {
        let v = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"x": 1}}});
        let m = Message::read(&v).unwrap();
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.tool(), Some("echo"));
        assert_eq!(
            m.audit(),
            McpCall {
                method: Some("tools/call".into()),
                tool: Some("echo".into())
            }
        );
        let n = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(Message::read(&n).unwrap().kind, Kind::Notification);
        let r = json!({"jsonrpc": "2.0", "id": "a", "result": {}});
        assert_eq!(Message::read(&r).unwrap().kind, Kind::Response);
        assert!(Message::read(&json!([v])).is_err());
        assert!(Message::read(&json!({"id": 1, "method": "x"})).is_err());
        assert!(Message::read(&json!({"jsonrpc": "2.0", "id": 1})).is_err());
    }

    #[test]
    fn key_narrows_never_widens() {
        let role = vec!["github:search_*".to_string(), "jira:*".to_string()];
        let a = ToolAccess {
            role: &role,
            key: None,
        };
        assert!(a.allows("github", "search_code"));
        assert!(!a.allows("github", "delete_repo"));
        assert!(a.allows("jira", "anything"));
        let key = vec!["*".to_string()];
        let b = ToolAccess {
            role: &role,
            key: Some(&key),
        };
        assert!(!b.allows("github", "delete_repo"));
        let key = vec!["jira:get_*".to_string()];
        let c = ToolAccess {
            role: &role,
            key: Some(&key),
        };
        assert!(c.allows("jira", "get_issue"));
        assert!(!c.allows("jira", "delete_issue"));
        assert!(!c.allows("github", "search_code"));
    }

    #[test]
    fn lists_only_allowed_tools() {
        let mut r = json!({"tools": [{"name": "echo"}, {"name": "secret"}, {"nameless": 1}]});
        let listed = filter_tools_list(&mut r, |t| t == "echo");
        assert_eq!(listed, vec!["echo", "secret"]);
        assert_eq!(r, json!({"tools": [{"name": "echo"}]}));
    }
}
