//! `sluice keys new --store`: a key made directly in the store, to bootstrap a deployment whose
//! config holds no key (or to hand out a first admin-free key).
//!
//! Running gateways sharing the store pick the key up within a poll. The command cannot append
//! to a running gateway's audit trail (the gateway holds the log's lock); the key's row records
//! when it was made.

use crate::config::Config;
use crate::store::{KeyRow, Store};

/// Creates a key for `user` (who must be in the config) in `config`'s store; returns its id
/// and the key, which is shown once and never stored.
pub async fn create_in_store(
    config: &Config,
    user: &str,
    id: Option<String>,
    name: Option<String>,
) -> Result<(String, String), String> {
    if !config.users.iter().any(|u| u.name == user) {
        return Err(format!(
            "--user: no user `{user}` in the config's [[users]]"
        ));
    }
    let id = id.unwrap_or_else(super::new_id);
    if !super::admin::valid_id(&id) {
        return Err("--id: use 1 to 64 letters, digits, `-`, `_` or `.`".into());
    }
    if config.keys.iter().any(|k| k.id == id) {
        return Err(format!("--id: `{id}` is a configured key's id"));
    }
    let store = Store::open(&config.store)
        .await
        .map_err(|e| format!("store.url: cannot open {}: {e}", config.store.display_url()))?;
    let key = sluice_filters::auth::generate_key();
    let row = KeyRow {
        id: id.clone(),
        user: user.to_string(),
        name: name.unwrap_or_else(|| "bootstrap".into()),
        sha256: sluice_filters::auth::key_sha256_hex(&key),
        models: None,
        rate_limit: None,
        disabled: false,
        created: crate::store::now_secs(),
        expires: None,
        parent: None,
        budget: None,
    };
    let made = store.create_key(&row).await;
    store.close().await;
    made.map_err(|e| format!("cannot store the key: {e}"))?;
    Ok((id, key))
}
