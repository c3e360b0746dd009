//! One audit record: its fields, its canonical JSON and its place in the hash chain.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{Cx, Exchange};

/// The `prev` of the first record of a chain: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Client-controlled strings (request id, path, model, agent id, user agent) are cut to this
/// many bytes, so that one record — and so one line of the log — stays small whatever a client
/// sends. Headers and paths are already bounded by the HTTP layer; this is the audit log's own
/// bound.
pub const MAX_FIELD_BYTES: usize = 1024;

/// One line of the audit log, with the fields of SPEC §6 in their canonical order.
///
/// Serialized with `serde_json` (no whitespace, fields in declaration order, absent fields left
/// out), this *is* the canonical JSON the hash chain is computed over — see the module docs of
/// [`crate::audit`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the request arrived, RFC 3339 UTC with milliseconds.
    pub ts: String,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// How the caller authenticated: `key`, `jwt` or `session` (SPEC §13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The JSON-RPC method of an MCP request (`/mcp/{server}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    /// The tool of an MCP `tools/call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    pub stream: bool,
    /// The status the client received; absent when it received none (it went away first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub outcome: String,
    pub latency_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<u64>,
    /// The upstream that answered (or, when none did, the last one tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Upstream attempts the request took (retries on other targets included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<RecordUsage>,
    /// What the request cost at its model's price, in US dollars (SPEC §15): present whenever
    /// its usage is known (0 for an unpriced model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dlp: Vec<RecordDlp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Set by the writer when the record joins the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One detector's findings: never the matched text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordDlp {
    pub detector: String,
    pub direction: String,
    pub action: String,
    pub count: u32,
}

impl AuditRecord {
    /// The record of one request, from the facts filters and the engine gathered in `cx` and
    /// how it ended. Holds no key and no body: `Cx` carries neither (the identity holds the
    /// key's configured id, DLP findings hold detector names and counts).
    pub fn from_request(cx: &Cx, ex: &Exchange) -> AuditRecord {
        let identity = cx.identity.as_ref();
        let mcp = cx.extensions.get::<crate::mcp::McpCall>();
        AuditRecord {
            ts: format_ts(cx.started_at),
            request_id: bounded(&cx.request_id),
            key_id: identity.map(|i| i.key_id.to_string()),
            user: identity.map(|i| i.user.to_string()),
            org: identity.map(|i| i.org.to_string()),
            role: identity.map(|i| i.role.to_string()),
            // The console marks its own records (`session`); the auth filter says how an API
            // caller authenticated (`key` or `jwt`).
            auth: cx.auth.map(str::to_string).or_else(|| {
                identity.map(|_| {
                    let method = cx.extensions.get::<crate::auth::AuthMethod>();
                    method.map_or("key", |m| m.as_str()).to_string()
                })
            }),
            client_ip: cx.client_ip.map(|ip| ip.to_string()),
            method: bounded(cx.method.as_str()),
            path: bounded(&cx.path),
            model: cx
                .model
                .as_deref()
                .or(cx.unknown_model.as_deref())
                .map(bounded),
            agent_id: cx.agent_id.as_deref().map(bounded),
            mcp_method: mcp.and_then(|m| m.method.as_deref()).map(bounded),
            tool: mcp.and_then(|m| m.tool.as_deref()).map(bounded),
            stream: cx.stream,
            status: (ex.status != 0).then_some(ex.status),
            outcome: ex.outcome.as_str().to_string(),
            latency_ms: millis(ex.latency),
            upstream_ms: ex.upstream_latency.map(millis),
            upstream: cx
                .upstream
                .as_deref()
                .filter(|_| cx.attempts > 0)
                .map(bounded),
            attempts: (cx.attempts > 0).then_some(cx.attempts),
            usage: cx.usage.map(|u| RecordUsage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            }),
            cost_usd: cx.extensions.get::<crate::spend::Cost>().and_then(|c| {
                serde_json::Number::from_f64(crate::spend::usd_f64(
                    i64::try_from(c.micros).unwrap_or(i64::MAX),
                ))
            }),
            dlp: cx
                .dlp
                .iter()
                .map(|f| RecordDlp {
                    detector: bounded(&f.detector),
                    direction: f.direction.to_string(),
                    action: f.action.to_string(),
                    count: f.count,
                })
                .collect(),
            user_agent: cx.user_agent.as_deref().map(bounded),
            prev: None,
            hash: None,
        }
    }

    /// The record's canonical JSON without `prev` and `hash`: what the request path hands to
    /// the writer, which appends `prev` and seals it (see [`seal`]).
    pub fn to_body(&self) -> Result<Vec<u8>, serde_json::Error> {
        if self.prev.is_some() || self.hash.is_some() {
            let mut unsealed = self.clone();
            unsealed.prev = None;
            unsealed.hash = None;
            return serde_json::to_vec(&unsealed);
        }
        serde_json::to_vec(self)
    }
}

/// Seals an unsealed record body (`{…}`, the canonical JSON without `prev` and `hash`) into the
/// chain after `prev`: appends the line `{…,"prev":"<prev>","hash":"<hash>"}\n` to `out` and
/// returns the new hash, where `hash = sha256_hex(prev + {…,"prev":"<prev>"})`.
///
/// `prev` and `hash` are the last fields of the canonical order, so inserting them before the
/// closing brace gives exactly what serializing the whole record would: the request path
/// serializes once, in parallel, and the writer only hashes.
pub fn seal(body: &[u8], prev: &str, out: &mut Vec<u8>) -> Result<String, SealError> {
    let inner = match body {
        [b'{', .., b'}'] if body.len() > 2 => &body[..body.len() - 1],
        _ => return Err(SealError),
    };
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(inner);
    h.update(b",\"prev\":\"");
    h.update(prev.as_bytes());
    h.update(b"\"}");
    let mut hash = [0u8; 64];
    hex::encode_to_slice(h.finalize(), &mut hash).map_err(|_| SealError)?;
    out.reserve(inner.len() + prev.len() + hash.len() + 24);
    out.extend_from_slice(inner);
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(b"\",\"hash\":\"");
    out.extend_from_slice(&hash);
    out.extend_from_slice(b"\"}\n");
    String::from_utf8(hash.to_vec()).map_err(|_| SealError)
}

/// The body handed to [`seal`] is not a non-empty JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealError;

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an audit record body must be a non-empty JSON object")
    }
}

impl std::error::Error for SealError {}

/// `hex(sha256(prev + canonical))`: the chain's hash function.
pub fn chain_hash(prev: &str, canonical: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(canonical);
    hex::encode(h.finalize())
}

/// Whether `s` looks like a chain hash: 64 lowercase hex digits.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// RFC 3339 in UTC with milliseconds (`2023-11-14T22:13:20.123Z`), written digit by digit:
/// this runs once per request, and the `time` crate's general formatter cost several times
/// more. A year it cannot write in four digits is written as the epoch.
fn format_ts(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let Ok(year) = u32::try_from(dt.year()) else {
        return EPOCH_TS.to_string();
    };
    if year > 9999 {
        return EPOCH_TS.to_string();
    }
    let mut s = String::with_capacity(EPOCH_TS.len());
    for (n, width, after) in [
        (year, 4, '-'),
        (u32::from(u8::from(dt.month())), 2, '-'),
        (u32::from(dt.day()), 2, 'T'),
        (u32::from(dt.hour()), 2, ':'),
        (u32::from(dt.minute()), 2, ':'),
        (u32::from(dt.second()), 2, '.'),
        (u32::from(dt.millisecond()), 3, 'Z'),
    ] {
        for place in (0..width).rev() {
            let digit = n / 10u32.pow(place) % 10;
            s.push(char::from(b'0' + digit as u8));
        }
        s.push(after);
    }
    s
}

const EPOCH_TS: &str = "1970-01-01T00:00:00.000Z";

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `s` cut to [`MAX_FIELD_BYTES`] at a character boundary.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s.to_string();
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn sample() -> AuditRecord {
        AuditRecord {
            ts: "2025-01-02T03:04:05.678Z".into(),
            request_id: "req-1".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            outcome: "ok".into(),
            user_agent: Some("ua \"quoted\" \u{7} é".into()),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn seal_equals_serializing_the_whole_record() {
        let rec = sample();
        let body = rec.to_body().unwrap();
        let mut line = Vec::new();
        let hash = seal(&body, GENESIS_PREV, &mut line).unwrap();

        let mut with_prev = rec.clone();
        with_prev.prev = Some(GENESIS_PREV.into());
        let canonical = serde_json::to_vec(&with_prev).unwrap();
        assert_eq!(hash, chain_hash(GENESIS_PREV, &canonical));

        let mut whole = with_prev;
        whole.hash = Some(hash);
        let mut expected = serde_json::to_vec(&whole).unwrap();
        expected.push(b'\n');
        assert_eq!(line, expected);
    }

    #[test]
    fn absent_fields_are_left_out_and_order_is_fixed() {
        let body = String::from_utf8(sample().to_body().unwrap()).unwrap();
        assert!(body.starts_with(r#"{"ts":"2025-01-02T03:04:05.678Z","request_id":"req-1","method":"POST","path":"/v1/chat/completions","stream":false,"outcome":"ok","latency_ms":0,"user_agent":"#));
        assert!(!body.contains("key_id") && !body.contains("usage") && !body.contains("dlp"));
        assert!(
            body.contains(r#"\u0007"#),
            "control characters are escaped: {body}"
        );
    }

    #[test]
    fn seal_rejects_non_objects() {
        let mut out = Vec::new();
        assert_eq!(seal(b"{}", GENESIS_PREV, &mut out), Err(SealError));
        assert_eq!(seal(b"[1]", GENESIS_PREV, &mut out), Err(SealError));
        assert!(out.is_empty());
    }

    #[test]
    fn long_client_strings_are_bounded_at_char_boundaries() {
        let s = "é".repeat(MAX_FIELD_BYTES);
        let b = bounded(&s);
        assert!(b.len() <= MAX_FIELD_BYTES && b.len() >= MAX_FIELD_BYTES - 1);
        assert!(b.chars().all(|c| c == 'é'));
    }

    #[test]
    fn ts_is_rfc3339_utc_millis() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_ts(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_ts(UNIX_EPOCH), EPOCH_TS);
    }

    #[test]
    fn ts_matches_the_time_crates_formatter() {
        let reference = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let mut ms: i64 = -86_400_000 * 365 * 3 + 7;
        while ms < 253_402_300_799_999 {
            let t = if ms >= 0 {
                UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
            } else {
                UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
            };
            let expected = OffsetDateTime::from(t).format(reference).unwrap();
            assert_eq!(format_ts(t), expected, "at {ms} ms");
            ms += 987_654_321_987;
        }
        // The last instant it can write.
        let last = UNIX_EPOCH + std::time::Duration::from_millis(253_402_300_799_999);
        assert_eq!(format_ts(last), "9999-12-31T23:59:59.999Z");
    }
}
