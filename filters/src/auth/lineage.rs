//! What a store key inherits from the keys it was made from (SPEC §12): it is bound by their
//! limits (the rate-limit filter charges every key in [`Identity::ancestors`]), refused while
//! any of them is disabled, once any of them is revoked or gone, and from the earliest expiry.
//!
//! [`Identity::ancestors`]: crate::Identity::ancestors

use std::collections::HashMap;
use std::sync::Arc;

use super::runtime::{StoreKey, StoreKeyTable};

/// The deepest chain of keys made from keys that is followed; deeper (or circular) chains,
/// which the key API cannot make, authenticate nobody.
const MAX_ANCESTRY: usize = 32;

/// A store key's ancestry, resolved against the table in force.
pub struct Lineage {
    /// Parent first.
    pub ancestors: Vec<Arc<str>>,
    /// Some ancestor is disabled, revoked or gone (or the chain is circular or too deep).
    pub disabled: bool,
    /// The earliest expiry of the key and its ancestors.
    pub expires: Option<u64>,
}

impl Lineage {
    /// `config`: the configured keys' ids and whether each is disabled.
    pub fn of(k: &StoreKey, table: &StoreKeyTable, config: &HashMap<&str, bool>) -> Lineage {
        let mut line = Lineage {
            ancestors: Vec::new(),
            disabled: false,
            expires: k.expires,
        };
        let mut next = k.parent.clone();
        while let Some(id) = next.take() {
            if line.ancestors.len() >= MAX_ANCESTRY || *id == *k.id || line.ancestors.contains(&id)
            {
                line.disabled = true;
                break;
            }
            if let Some(&disabled) = config.get(&*id) {
                line.disabled |= disabled;
                line.ancestors.push(id);
                break;
            }
            // Not in the table: revoked (or its user's keys are gone), and this key with it.
            let Some(parent) = table.get(&id) else {
                line.disabled = true;
                break;
            };
            line.disabled |= parent.disabled;
            line.expires = match (line.expires, parent.expires) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            next = parent.parent.clone();
            line.ancestors.push(id);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StoreKeyFields;

    fn key(
        id: &str,
        n: u8,
        parent: Option<&str>,
        expires: Option<u64>,
        disabled: bool,
    ) -> StoreKey {
        let fields = StoreKeyFields {
            id: id.into(),
            user: "alice".into(),
            name: String::new(),
            models: None,
            rate_limit: None,
            disabled,
            created: 1,
            expires,
            parent: parent.map(str::to_string),
            budget: None,
        };
        StoreKey::new(fields, &format!("{n:02x}").repeat(32)).expect("valid digest")
    }

    #[test]
    fn a_key_inherits_its_ancestors_expiry_and_state() {
        let table = StoreKeyTable::new(
            1,
            vec![
                key("p", 1, Some("cfg"), Some(500), false),
                key("c", 2, Some("p"), Some(900), false),
                key("g", 3, Some("c"), None, false),
                key("orphan", 4, Some("revoked"), None, false),
                key("loop-a", 5, Some("loop-b"), None, false),
                key("loop-b", 6, Some("loop-a"), None, false),
            ],
        );
        let mut config = HashMap::from([("cfg", false)]);
        let line = |id: &str, config: &HashMap<&str, bool>| {
            Lineage::of(table.get(id).expect("key"), &table, config)
        };
        let g = line("g", &config);
        let names: Vec<&str> = g.ancestors.iter().map(|a| &**a).collect();
        assert_eq!(names, ["c", "p", "cfg"]);
        assert_eq!((g.disabled, g.expires), (false, Some(500)));
        assert!(line("orphan", &config).disabled);
        assert!(line("loop-a", &config).disabled);
        config.insert("cfg", true);
        assert!(line("g", &config).disabled);
        config.remove("cfg");
        assert!(line("p", &config).disabled, "a parent gone from the config");
    }
}
