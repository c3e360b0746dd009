//! Passthrough is authorized by the model it names (SPEC §3). A body whose model Sluice cannot
//! read — not a JSON object, no top-level string `model` (`null`, nested, an array), multipart
//! and form bodies, a BOM before the JSON, a model only in the query — may still name one to the
//! upstream, so it is forwarded only for a caller allowed every model that upstream serves.

use sluice_filters::api::Models;
use sluice_filters::Reply;

use super::Call;

impl Call {
    /// The `403 model_not_allowed` of a request on a route with passthrough's model rule
    /// ([`Models::IfNamedElseEvery`]) that names no readable model, when
    /// the caller may not use every model of the upstream it goes to.
    pub(crate) fn unnamed_model_refusal(&self) -> Option<Reply> {
        let rules = self.cx.route.api_route()?;
        if rules.models != Models::IfNamedElseEvery || self.cx.model.is_some() {
            return None;
        }
        // Without `auth` in the chain there is no caller to authorize (a plain proxy); without
        // the route's permission the chain refuses it with `permission_denied`.
        let id = self.cx.identity.as_ref()?;
        if !id.grants.has(rules.permission) {
            return None;
        }
        let snap = &self.snap;
        let upstreams: Vec<usize> = snap
            .default_route
            .targets
            .iter()
            .map(|t| t.upstream)
            .collect();
        let served = snap
            .config
            .models
            .iter()
            .zip(&snap.routes)
            .filter(|(_, r)| r.targets.iter().any(|t| upstreams.contains(&t.upstream)));
        let mut denied = served.filter(|(m, _)| !id.grants.may_use_model(&m.name));
        denied.next()?;
        Some(Reply::error(
            403,
            "model_not_allowed",
            format!(
                "The API key `{}` may not send this request: it names no model Sluice can read \
                 (a JSON object body with a top-level string `model`), and such requests are \
                 forwarded only for keys allowed every model of their upstream. Name the model \
                 in a JSON body.",
                id.key_id
            ),
        ))
    }
}
