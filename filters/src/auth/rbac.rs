//! Role-based access: which permission each route needs, and the model and agent globs.
//!
//! A key's permissions are its user's role's; its models are the role's narrowed by the key's
//! own `models` ([`Grants::may_use_model`]). The replies name what is missing, so the caller
//! (or their administrator) knows what to change, and nothing more: the key id and role are the
//! caller's own, and the model or agent is what they asked for.

use crate::api::{self, ApiRoute, Models};
use crate::{Cx, Grants, Identity, Permission, Reply, Route};

/// Longest model or agent name echoed back in an error message. Both come from the client, so
/// a message quoting them is bounded like everything else.
const MAX_ECHO_CHARS: usize = 128;

/// Checks that `id` may do what `cx` describes. `Err` is the reply to send instead.
pub(crate) fn authorize(id: &Identity, cx: &Cx) -> Result<(), Reply> {
    match cx.route {
        Route::Api(r) => governed(id, cx, r),
        Route::Passthrough => governed(id, cx, &api::passthrough::ROUTE),
        Route::ListModels | Route::GetModel => require(id, Permission::ModelsList, "list models"),
        // The agent's own model is the administrator's choice when they granted the agent, so
        // the role's model globs do not apply (SPEC §5); a key's own `models` narrows every
        // route, agent runs included (SPEC §12).
        Route::AgentRun | Route::AgentRunStatus => {
            require(id, Permission::AgentsRun, "run agents")?;
            require_agent(id, cx.agent_id.as_deref())?;
            match (cx.route, cx.model.as_deref()) {
                (Route::AgentRun, Some(model)) => require_key_model(id, model),
                _ => Ok(()),
            }
        }
        Route::Keys | Route::Key => require(id, Permission::KeysManage, "manage API keys"),
        // Per tool, by the engine's MCP route (the role's `mcp` globs).
        Route::Mcp => require(id, Permission::Mcp, "call MCP tools"),
        // Answered 404 by the engine; there is nothing to authorise.
        Route::Unknown | Route::Root => Ok(()),
        // Any authenticated caller may read its own user's usage (SPEC §15).
        Route::Usage => Ok(()),
    }
}

/// A governed API or passthrough: the route's permission, then its model ([`Models`]).
fn governed(id: &Identity, cx: &Cx, r: &ApiRoute) -> Result<(), Reply> {
    require(id, r.permission, r.action)?;
    match (cx.model.as_deref(), r.models) {
        (Some(model), _) => require_model(id, model),
        // The engine answers this itself before the chain runs; refusing here too keeps an
        // unchecked request from ever reaching an upstream.
        (None, Models::Required) => Err(Reply::error(
            400,
            "missing_model",
            "The request body must name a `model` (GET /v1/models lists the ones your key may use).",
        )),
        // An unnamed model is the engine's to check: it knows the upstream the request goes to.
        (None, Models::IfNamed | Models::IfNamedElseEvery) => Ok(()),
    }
}

fn require(id: &Identity, permission: Permission, action: &str) -> Result<(), Reply> {
    if id.grants.has(permission) {
        return Ok(());
    }
    let p = permission.as_str();
    Err(Reply::error(
        403,
        "permission_denied",
        format!(
            "The API key `{}` may not {action}: its role `{}` lacks the `{p}` permission. \
             Ask your administrator to add `{p}` to the role's permissions.",
            id.key_id, id.role
        ),
    ))
}

fn require_model(id: &Identity, model: &str) -> Result<(), Reply> {
    let grants: &Grants = &id.grants;
    if grants.may_use_model(model) {
        return Ok(());
    }
    // Say which list refused it: the fix is a different config entry in each case.
    let role_allows = grants.models.iter().any(|g| crate::glob_match(g, model));
    let why = if role_allows {
        "the key's own `models` list does not include it".to_string()
    } else {
        format!("its role `{}` does not allow it", id.role)
    };
    Err(Reply::error(
        403,
        "model_not_allowed",
        format!(
            "The API key `{}` may not use the model `{}`: {why}. \
             Use a model your key allows (GET /v1/models lists them) or ask your administrator.",
            id.key_id,
            bounded(model)
        ),
    ))
}

/// An agent's model against the key's own `models` only.
fn require_key_model(id: &Identity, model: &str) -> Result<(), Reply> {
    let allowed = id
        .grants
        .key_models
        .as_ref()
        .is_none_or(|k| k.iter().any(|g| crate::glob_match(g, model)));
    if allowed {
        return Ok(());
    }
    Err(Reply::error(
        403,
        "model_not_allowed",
        format!(
            "The API key `{}` may not run this agent: the agent uses the model `{}`, which the \
             key's own `models` list does not include. Use a key that allows it.",
            id.key_id,
            bounded(model)
        ),
    ))
}

fn require_agent(id: &Identity, agent: Option<&str>) -> Result<(), Reply> {
    match agent {
        Some(agent) if id.grants.may_run_agent(agent) => Ok(()),
        Some(agent) => Err(Reply::error(
            403,
            "agent_not_allowed",
            format!(
                "The API key `{}` may not run the agent `{}`: its role `{}` does not allow it. \
                 Ask your administrator to add it to the role's `agents`.",
                id.key_id,
                bounded(agent),
                id.role
            ),
        )),
        // The engine always sets the agent id on agent routes; without one there is nothing
        // the role could have granted, so refuse rather than guess.
        None => Err(Reply::error(
            403,
            "agent_not_allowed",
            "The request does not name an agent (use /v1/agents/{agentId}/run).",
        )),
    }
}

/// `s`, cut to [`MAX_ECHO_CHARS`] characters.
fn bounded(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_ECHO_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn identity(grants: Grants) -> Identity {
        Identity {
            key_id: "k1".into(),
            user: "alice".into(),
            org: "acme".into(),
            role: "analyst".into(),
            grants: Arc::new(grants),
            ancestors: Arc::from([]),
        }
    }

    fn cx(route: Route, model: Option<&str>) -> Cx {
        let mut cx = Cx::new("req".into(), http::Method::POST, "/v1/x".into());
        cx.route = route;
        cx.model = model.map(str::to_string);
        cx
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let id = identity(Grants {
            permissions: vec![Permission::Chat],
            models: vec!["mock-*".into()],
            ..Grants::default()
        });
        let model = "x".repeat(10_000);
        let reply = authorize(&id, &cx(Route::Api(&api::chat::ROUTE), Some(&model))).unwrap_err();
        assert!(reply.body.len() < 1_000, "{}", reply.body.len());
        assert!(bounded("short") == "short");
        assert_eq!(
            bounded(&"é".repeat(200)).chars().count(),
            MAX_ECHO_CHARS + 1
        );
    }

    #[test]
    fn model_refusal_says_which_list_refused() {
        let id = identity(Grants {
            permissions: vec![Permission::Chat],
            models: vec!["mock-*".into()],
            key_models: Some(vec!["mock-echo".into()]),
            ..Grants::default()
        });
        let by_key =
            authorize(&id, &cx(Route::Api(&api::chat::ROUTE), Some("mock-other"))).unwrap_err();
        assert!(String::from_utf8_lossy(&by_key.body).contains("key's own `models`"));
        let by_role =
            authorize(&id, &cx(Route::Api(&api::chat::ROUTE), Some("gpt-4o"))).unwrap_err();
        assert!(String::from_utf8_lossy(&by_role.body).contains("role `analyst`"));
    }
}
