//! The rows the store holds.

use std::fmt;

use sluice_filters::auth::{StoreKey, StoreKeyFields};
use sluice_filters::policy::RateLimitSpec;

/// An API key of the store: its SHA-256, never the key.
#[derive(Clone, PartialEq)]
pub struct KeyRow {
    pub id: String,
    pub user: String,
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
    pub models: Option<Vec<String>>,
    pub rate_limit: Option<RateLimitSpec>,
    pub disabled: bool,
    /// Unix seconds.
    pub created: i64,
    pub expires: Option<i64>,
    /// The key that made this one through the key API (a store or config key id): this key is
    /// bound by its limits, expiry and revocation too.
    pub parent: Option<String>,
    /// SPEC §15.
    pub budget: Option<sluice_filters::spend::BudgetSpec>,
}

impl KeyRow {
    /// What the auth filter looks keys up in (`None` for a row whose hash is not one).
    pub fn to_store_key(&self) -> Option<StoreKey> {
        StoreKey::new(
            StoreKeyFields {
                id: self.id.clone(),
                user: self.user.clone(),
                name: self.name.clone(),
                models: self.models.clone(),
                rate_limit: self.rate_limit.clone(),
                disabled: self.disabled,
                created: self.created.max(0) as u64,
                expires: self.expires.map(|e| e.max(0) as u64),
                parent: self.parent.clone(),
                budget: self.budget,
            },
            &self.sha256,
        )
    }

    pub(crate) fn models_json(&self) -> Option<String> {
        self.models
            .as_ref()
            .and_then(|m| serde_json::to_string(m).ok())
    }

    pub(crate) fn budget_json(&self) -> Option<String> {
        self.budget
            .as_ref()
            .and_then(|b| serde_json::to_string(b).ok())
    }

    pub(crate) fn rate_limit_json(&self) -> Option<String> {
        self.rate_limit
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
    }
}

/// Leaves the hash out.
impl fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRow")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("name", &self.name)
            .field("models", &self.models)
            .field("rate_limit", &self.rate_limit)
            .field("disabled", &self.disabled)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

/// What `PUT /admin/v1/keys/{id}` changes; `None` leaves a field as it is, `Some(None)`
/// clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub models: Option<Option<Vec<String>>>,
    pub rate_limit: Option<Option<RateLimitSpec>>,
    pub disabled: Option<bool>,
    pub expires: Option<Option<i64>>,
    pub budget: Option<Option<sluice_filters::spend::BudgetSpec>>,
}

/// An asynchronous agent run as stored: its object (the JSON the API answers) and who may read
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub agent_id: String,
    pub org: Option<String>,
    pub object: serde_json::Value,
    /// Orders the states of a run (queued < running < finished), so that a late write of an
    /// earlier state never overwrites a later one.
    pub rank: i64,
    /// Unix seconds after which the run is gone.
    pub expires: i64,
}

/// Decodes the JSON columns of a key row; a value that does not parse is a broken row.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    col: &str,
    id: &str,
    v: Option<String>,
) -> Result<Option<T>, String> {
    match v {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| format!("api_keys `{id}`: column {col} is not valid JSON: {e}")),
    }
}
