//! The identity a key-signed-in session acts as: the identity of that key, resolved again on
//! every request from the current config and the store's keys — the same grants the auth filter
//! gives the key (its user's role, narrowed by the key's own `models`). A key that is gone,
//! disabled or expired, or whose user the directory disables, resolves to nothing, and the
//! session ends with it.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_filters::auth::Lineage;

use sluice_filters::{Grants, Identity, Permission};

use crate::state::{EngineState, Snapshot};

/// The identity of the key `key_id`, if it authenticates today.
pub fn identity_of_key(state: &EngineState, snap: &Snapshot, key_id: &str) -> Option<Identity> {
    let config = &snap.config;
    if let Some(k) = config.keys.iter().find(|k| k.id == key_id) {
        if k.disabled {
            return None;
        }
        return identity_of(state, snap, key_id, &k.user, k.models.clone());
    }
    let table = state.store.keys().table();
    let k = table.get(key_id)?;
    // The key's lineage, as the auth filter resolves it: refused while an ancestor is disabled,
    // revoked or gone, and from the earliest expiry of the line.
    let config_keys: HashMap<&str, bool> = config
        .keys
        .iter()
        .map(|c| (c.id.as_str(), c.disabled))
        .collect();
    let line = Lineage::of(k, &table, &config_keys);
    let now = crate::store::now_secs().max(0) as u64;
    if k.disabled || line.disabled || line.expires.is_some_and(|e| e <= now) {
        return None;
    }
    let mut id = identity_of(state, snap, key_id, &k.user, k.models.clone())?;
    id.ancestors = line.ancestors.into();
    Some(id)
}

/// The identity of a provider-signed-in session of `user` (no key: its role's grants, with
/// the key id `oidc:{user}`); nothing when the directory disables the user or lacks their role.
pub fn identity_of_user(state: &EngineState, snap: &Snapshot, user: &str) -> Option<Identity> {
    identity_of(state, snap, &format!("oidc:{user}"), user, None)
}

/// The identity of a key of `user` with its own `models`: a `[[users]]` entry, or a provider
/// user of the store's directory (the org and role of their last sign-in). A user the
/// directory disables resolves to nothing.
fn identity_of(
    state: &EngineState,
    snap: &Snapshot,
    key_id: &str,
    user: &str,
    key_models: Option<Vec<String>>,
) -> Option<Identity> {
    let config = &snap.config;
    let directory = state.store.users().table();
    if directory.is_disabled(user) {
        return None;
    }
    let (org, role_name) = match config.users.iter().find(|u| u.name == user) {
        Some(u) => (u.org.clone(), u.role.clone()),
        None => {
            let d = directory.get(user)?;
            (d.org.clone()?, d.role.clone()?)
        }
    };
    let role = config.roles.iter().find(|r| r.name == role_name)?;
    let grants = Grants {
        permissions: role
            .permissions
            .iter()
            .filter_map(|p| Permission::parse(p))
            .collect(),
        models: role.models.clone(),
        key_models,
        agents: role.agents.clone(),
    };
    Some(Identity {
        key_id: Arc::from(key_id),
        user: Arc::from(user),
        org: Arc::from(org.as_str()),
        role: Arc::from(role.name.as_str()),
        grants: Arc::new(grants),
        ancestors: Arc::from([]),
    })
}
