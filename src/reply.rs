//! How a reply Sluice makes itself (an error, a refusal, a JSON-RPC answer) is written to the
//! client: one head for the proxy and the MCP route alike, so both carry the same headers
//! (request id, rate limits, the reply's own) and the same framing.

use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use sluice_filters::Reply;

use crate::pipeline::Call;

/// Writes `reply`, rendered in the call's API shape, as the whole response. `close`: the
/// connection is not reused afterwards (the request body was left unread, or the caller
/// gives up on the connection). The caller has already decided the reply may go out (the
/// chain's durability hook, SPEC §6).
pub(crate) async fn write(
    session: &mut Session,
    call: &Call,
    reply: &Reply,
    close: bool,
) -> Result<()> {
    let body = call.render(reply);
    let mut h = ResponseHeader::build(reply.status, Some(8))?;
    h.insert_header("content-type", reply.content_type)?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-request-id", call.request_id())?;
    for (n, v) in call.response_headers() {
        h.insert_header(n.clone(), v.clone())?;
    }
    for (n, v) in &reply.headers {
        h.insert_header(n.clone(), v.clone())?;
    }
    if close {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
