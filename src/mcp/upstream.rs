//! The request to an MCP server, over Pingora's own HTTP/1.1 client (TLS with SNI and
//! certificate verification, a connection pool per config generation).
//!
//! Only the headers MCP's transport defines cross from the client (`Accept`, `Content-Type`,
//! `Mcp-Session-Id`, `MCP-Protocol-Version`, `Last-Event-ID`): the client's `Authorization`
//! and cookies never do. The server's own credential is added.

use bytes::Bytes;
use http::{HeaderMap, Method};
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use sluice_filters::Reply;

use super::{McpServers, ServerRt};

/// Client request headers an MCP server receives.
const FORWARDED: [&str; 5] = [
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// Server response headers the client receives.
pub const RETURNED: [&str; 4] = [
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "cache-control",
];

/// An open exchange with an MCP server: its response head has arrived.
pub struct Exchange {
    session: HttpSession,
    peer: HttpPeer,
    pub head: Box<ResponseHeader>,
}

fn peer(s: &ServerRt) -> HttpPeer {
    let mut p = HttpPeer::new(s.addr, s.tls, s.host.clone());
    p.options.connection_timeout = Some(s.connect_timeout);
    p.options.read_timeout = Some(s.read_timeout);
    p.options.write_timeout = Some(s.read_timeout);
    p.options.idle_timeout = Some(std::time::Duration::from_secs(30));
    p.options.verify_cert = true;
    p.options.verify_hostname = true;
    p
}

/// Why the server could not be reached: the reply to answer (`502`/`504`).
fn unreachable(server: &str, e: &pingora_core::Error) -> Reply {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    if timeout {
        Reply::error(
            504,
            "upstream_timeout",
            format!("The MCP server `{server}` did not answer in time."),
        )
    } else {
        Reply::error(
            502,
            "upstream_unavailable",
            format!("The MCP server `{server}` could not be reached (refused or dropped the connection)."),
        )
    }
}

/// Sends the request and reads the response head.
pub async fn open(
    servers: &McpServers,
    s: &ServerRt,
    method: &Method,
    client: &HeaderMap,
    body: Option<Bytes>,
) -> Result<Exchange, Reply> {
    let peer = peer(s);
    let fail = |e: Box<pingora_core::Error>| unreachable(&s.name, &e);
    let mut req =
        RequestHeader::build(method.clone(), s.path.as_bytes(), Some(12)).map_err(fail)?;
    req.insert_header(http::header::HOST, s.host_value.clone())
        .map_err(fail)?;
    for name in FORWARDED {
        for v in client.get_all(name) {
            req.append_header(name, v.clone()).map_err(fail)?;
        }
    }
    req.insert_header("accept-encoding", "identity")
        .map_err(fail)?;
    if let Some(c) = &s.credential {
        req.insert_header(http::header::AUTHORIZATION, c.clone())
            .map_err(fail)?;
    }
    if let Some(b) = &body {
        req.insert_header(http::header::CONTENT_LENGTH, b.len().to_string())
            .map_err(fail)?;
    }
    let (session, _reused) = servers
        .connector
        .get_http_session(&peer)
        .await
        .map_err(fail)?;
    let HttpSession::H1(mut h1) = session else {
        return Err(Reply::error(
            502,
            "upstream_unavailable",
            "The MCP server negotiated a protocol other than HTTP/1.1.",
        ));
    };
    h1.write_request_header(Box::new(req)).await.map_err(fail)?;
    if let Some(b) = &body {
        h1.write_body(b).await.map_err(fail)?;
    }
    h1.finish_body().await.map_err(fail)?;
    let head = h1.read_resp_header_parts().await.map_err(fail)?;
    Ok(Exchange {
        session: HttpSession::H1(h1),
        peer,
        head,
    })
}

impl Exchange {
    /// The next piece of the response body (`None`: it ended).
    pub async fn next(&mut self) -> Result<Option<Bytes>, ()> {
        let HttpSession::H1(h1) = &mut self.session else {
            return Err(());
        };
        h1.read_body_bytes().await.map_err(|_| ())
    }

    /// Returns a fully read connection to the pool.
    pub async fn release(self, servers: &McpServers) {
        let mut session = self.session;
        if let HttpSession::H1(h1) = &mut session {
            if !h1.is_body_done() {
                return;
            }
            h1.respect_keepalive();
        }
        servers
            .connector
            .release_http_session(session, &self.peer, self.peer.options.idle_timeout)
            .await;
    }
}
