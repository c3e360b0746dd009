//! `budget` in the admin key API's bodies (SPEC §15): `{"usd": 25, "period": "daily"}`,
//! checked field by field so a refusal names `budget.usd`, `budget.period` or the unknown key.

use serde_json::Value;
use sluice_filters::spend::{BudgetSpec, Period};
use sluice_filters::Reply;

use super::error;

/// Reads a `budget` object, or the `400` naming the field path that is wrong.
pub(super) fn parse(v: &Value) -> Result<BudgetSpec, Reply> {
    let bad = |field: &str, msg: &str| {
        let path = format!("budget{field}");
        error(
            400,
            "invalid_parameter",
            format!("{path}: {msg}"),
            Some(&path),
        )
    };
    let Some(obj) = v.as_object() else {
        return Err(bad(
            "",
            "must be an object such as {\"usd\": 25, \"period\": \"daily\"}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "usd" && *k != "period") {
        let k: String = k.chars().take(64).collect();
        return Err(error(
            400,
            "unknown_parameter",
            format!("budget.{k}: unknown field (expected `usd`, `period`)"),
            Some(&format!("budget.{k}")),
        ));
    }
    let usd = obj
        .get("usd")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad(".usd", "must be a number of US dollars"))?;
    let period = match obj.get("period").and_then(Value::as_str) {
        Some("daily") => Period::Daily,
        Some("weekly") => Period::Weekly,
        Some("monthly") => Period::Monthly,
        Some("total") => Period::Total,
        _ => {
            return Err(bad(
                ".period",
                "must be one of \"daily\", \"weekly\", \"monthly\", \"total\"",
            ))
        }
    };
    let spec = BudgetSpec { usd, period };
    let mut errs = Vec::new();
    spec.validate("budget", &mut errs);
    match errs.first() {
        Some(e) => Err(error(
            400,
            "invalid_parameter",
            e.to_string(),
            Some("budget.usd"),
        )),
        None => Ok(spec),
    }
}

/// A `PUT` field: absent stays (`None`), `null` clears (`Some(None)`).
pub(super) fn parse_patch(v: Option<&Value>) -> Result<Option<Option<BudgetSpec>>, Reply> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => parse(v).map(|b| Some(Some(b))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(r: Result<impl std::fmt::Debug, Reply>) -> String {
        let reply = r.expect_err("refused");
        let body: Value = serde_json::from_slice(&reply.body).expect("json");
        body["error"]["param"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn budgets_parse_and_refusals_name_the_field() {
        let b = parse(&json!({"usd": 2.5, "period": "weekly"})).expect("ok");
        assert_eq!(b.micros(), 2_500_000);
        assert_eq!(b.period, Period::Weekly);
        assert_eq!(
            param(parse(&json!({"usd": -1, "period": "daily"}))),
            "budget.usd"
        );
        assert_eq!(
            param(parse(&json!({"usd": "5", "period": "daily"}))),
            "budget.usd"
        );
        assert_eq!(
            param(parse(&json!({"usd": 5, "period": "yearly"}))),
            "budget.period"
        );
        assert_eq!(
            param(parse(&json!({"usd": 5, "period": "daily", "x": 1}))),
            "budget.x"
        );
        assert_eq!(param(parse(&json!(5))), "budget");
        assert_eq!(parse_patch(Some(&Value::Null)).ok(), Some(Some(None)));
        assert_eq!(parse_patch(None).ok(), Some(None));
    }
}
