//! Users as the request path sees them beyond `[[users]]`: the store's users directory (users
//! first seen through the identity provider, and the `disabled` flag of any user), and who
//! vouches for provider tokens.
//!
//! Both are published by the engine into [`Shared`] and read by the auth filter with one atomic
//! load: the request path never reads the database.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;

use crate::Shared;

const USERS_KEY: &str = "auth:runtime_users";
const AUTHORITY_KEY: &str = "auth:token_authority";

/// How a request authenticated, in [`crate::Cx::extensions`] (audit records and traces show
/// it as `auth`). Absent on an authenticated request means [`AuthMethod::Key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Key,
    Jwt,
    /// A console session (set by the console).
    Session,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Key => "key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Session => "session",
        }
    }
}

/// A user of the store's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUser {
    pub name: String,
    /// `"oidc"` (first seen through the provider) or `"config"` (a `[[users]]` entry the
    /// directory holds a flag for).
    pub source: String,
    pub org: Option<String>,
    pub role: Option<String>,
    pub disabled: bool,
    /// Unix seconds.
    pub last_seen: Option<u64>,
}

/// The store's users at one store version.
#[derive(Debug, Default)]
pub struct StoreUserTable {
    by_name: HashMap<String, Arc<StoreUser>>,
}

impl StoreUserTable {
    pub fn new(users: Vec<StoreUser>) -> StoreUserTable {
        StoreUserTable {
            by_name: users
                .into_iter()
                .map(|u| (u.name.clone(), Arc::new(u)))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<StoreUser>> {
        self.by_name.get(name)
    }

    pub fn is_disabled(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|u| u.disabled)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<StoreUser>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// This table with `user` added or replaced.
    pub fn with(&self, user: StoreUser) -> StoreUserTable {
        let mut by_name = self.by_name.clone();
        by_name.insert(user.name.clone(), Arc::new(user));
        StoreUserTable { by_name }
    }
}

/// The store's users as this process knows them. One per process, in [`Shared`].
#[derive(Default)]
pub struct RuntimeUsers {
    table: ArcSwap<StoreUserTable>,
}

impl RuntimeUsers {
    pub fn in_shared(shared: &Shared) -> Arc<RuntimeUsers> {
        shared
            .get_or_try_init(USERS_KEY, || {
                Ok::<_, std::convert::Infallible>(RuntimeUsers::default())
            })
            .unwrap_or_else(|never| match never {})
    }

    pub fn table(&self) -> Arc<StoreUserTable> {
        self.table.load_full()
    }

    /// Whether the directory disables `name` (one atomic load, no allocation).
    pub fn is_disabled(&self, name: &str) -> bool {
        self.table.load().is_disabled(name)
    }

    pub fn publish(&self, table: StoreUserTable) {
        self.table.store(Arc::new(table));
    }
}

/// A provider token's user, mapped to an org and a role by `identity.roles`.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub name: Arc<str>,
    pub org: Arc<str>,
    pub role: Arc<str>,
}

/// Why a provider token was refused.
#[derive(Debug, Clone)]
pub enum TokenRefusal {
    /// `401 invalid_api_key` with this message (it names the failed check).
    Invalid(String),
    /// Verified, but no `identity.roles` rule matches its groups: `403`.
    NoRole(String),
}

/// Verifies provider tokens and maps them to users: implemented by the engine (it owns the
/// provider's key set and the directory), called by the auth filter for Bearer credentials
/// that are JWTs.
#[async_trait]
pub trait TokenAuthority: Send + Sync {
    async fn authenticate(&self, token: &str) -> Result<TokenUser, TokenRefusal>;
}

/// Where the engine installs its [`TokenAuthority`] (none without `[identity]`).
#[derive(Default)]
pub struct AuthoritySlot {
    current: ArcSwapOption<Box<dyn TokenAuthority>>,
}

impl AuthoritySlot {
    pub fn in_shared(shared: &Shared) -> Arc<AuthoritySlot> {
        shared
            .get_or_try_init(AUTHORITY_KEY, || {
                Ok::<_, std::convert::Infallible>(AuthoritySlot::default())
            })
            .unwrap_or_else(|never| match never {})
    }

    pub fn install(&self, authority: Option<Box<dyn TokenAuthority>>) {
        self.current.store(authority.map(Arc::new));
    }

    pub fn get(&self) -> Option<Arc<Box<dyn TokenAuthority>>> {
        self.current.load_full()
    }
}
