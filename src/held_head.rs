//! A held answer's head, sent with its body in one write.
//!
//! When a filter reads a non-streamed answer, Sluice holds the whole body and may rewrite it, so
//! the upstream's `Content-Length` is dropped at the head (its length is not known yet). Pingora
//! then frames the answer as chunked and flushes the head on its own: one more `write` per
//! request, and a head that cannot carry what only the body tells (its cost, SPEC §15).
//!
//! But the head is written later than it is filtered: Pingora filters every task that one
//! upstream read produced — the head, then the body — before it writes any of them, and its
//! downstream modules see the head only at that write. When the whole body arrived in the same
//! read (the usual case for an answer of a few KiB), [`HeldHead::complete`], called by the body
//! filter with the final body, leaves the length and the late headers here, and the module's
//! header filter puts them on the head: Pingora then writes head and body together. When the
//! head was already written (the body came in later reads), nothing changes: chunked, as before.

use std::any::Any;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// What the head of the answer being written still needs.
#[derive(Default)]
pub(crate) struct HeldHead {
    pending: Option<Completion>,
}

struct Completion {
    status: u16,
    length: usize,
    header: Option<(HeaderName, HeaderValue)>,
}

impl HeldHead {
    /// Registers the module with Pingora's downstream modules.
    pub(crate) fn register(modules: &mut HttpModules) {
        modules.add_module(Box::new(Builder));
    }

    /// The held body is complete (`length` bytes, the answer's status `status`): if the head
    /// is still unwritten, it will carry that length and `header`.
    pub(crate) fn complete(
        session: &mut Session,
        status: u16,
        length: usize,
        header: Option<(HeaderName, HeaderValue)>,
    ) {
        if session.response_written().is_some() || session.req_header().method == http::Method::HEAD
        {
            return;
        }
        if let Some(m) = session.downstream_modules_ctx.get_mut::<HeldHead>() {
            m.pending = Some(Completion {
                status,
                length,
                header,
            });
        }
    }
}

#[async_trait]
impl HttpModule for HeldHead {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end: bool,
    ) -> Result<()> {
        let Some(c) = self.pending.take() else {
            return Ok(());
        };
        // Only the head the body belongs to (the next one filtered, in the same batch).
        if resp.status.as_u16() != c.status {
            return Ok(());
        }
        // A length kept from the upstream is this body's already (nothing could change it).
        if !resp.headers.contains_key(http::header::CONTENT_LENGTH) {
            resp.remove_header(&http::header::TRANSFER_ENCODING);
            resp.insert_header(http::header::CONTENT_LENGTH, c.length)?;
        }
        if let Some((n, v)) = c.header {
            resp.insert_header(n, v)?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct Builder;

impl HttpModuleBuilder for Builder {
    fn init(&self) -> Module {
        Box::new(HeldHead::default())
    }
}
