//! The request fields every API reads the same way (`model`, `stream`, a token ceiling, `n`),
//! with the errors a client sees when one has the wrong type.

use serde_json::Value;

use crate::Reply;

/// A request's `model`: a non-empty string. `required`: its absence is an error.
pub(crate) fn read_model(body: &Value, required: bool) -> Result<Option<String>, Reply> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(Some(m.clone())),
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) | Some(Value::String(_)) => Err(Reply::error(
            400,
            "missing_model",
            "The request needs a `model` (a string); GET /v1/models lists the ones you may use.",
        )),
        Some(_) => Err(Reply::error(
            400,
            "invalid_model",
            "`model` must be a string; GET /v1/models lists the ones you may use.",
        )),
    }
}

/// The facts of a request that embeds or classifies its `input` (required; `shape` says what
/// it may be, for the error): only the model.
pub(crate) fn input_request(
    body: &Value,
    model_required: bool,
    shape: &str,
) -> Result<super::RequestFacts, Reply> {
    let model = read_model(body, model_required)?;
    if body.get("input").is_none_or(Value::is_null) {
        return Err(Reply::error(
            400,
            "missing_input",
            format!("The request needs `input` ({shape})."),
        ));
    }
    Ok(super::RequestFacts {
        model,
        ..super::RequestFacts::default()
    })
}

/// A request's `stream` flag (absent or null: false).
pub(crate) fn read_stream(body: &Value) -> Result<bool, Reply> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Reply::error(
            400,
            "invalid_stream",
            "`stream` must be true or false.",
        )),
    }
}

/// The largest of the ceilings `fields` the body gives (`null` counts as absent, as in
/// OpenAI's API). A ceiling that is not a non-negative integer (`100000.0`, `"100000"`, `-1`)
/// is refused naming it as `param`: read as absent it would reserve the default while the
/// upstream might honour it.
pub(crate) fn read_ceiling(body: &Value, fields: &[&str]) -> Result<Option<u64>, Reply> {
    let mut largest: Option<u64> = None;
    for f in fields {
        match body.get(*f) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) => largest = Some(largest.map_or(n, |l| l.max(n))),
                None => {
                    return Err(Reply::error(
                        400,
                        "invalid_value",
                        format!("`{f}` must be a non-negative integer."),
                    )
                    .with_param(f))
                }
            },
        }
    }
    Ok(largest)
}

/// `n` (at least 1; OpenAI accepts at most 128).
pub(crate) fn read_choices(body: &Value) -> u64 {
    body.get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128)
}
