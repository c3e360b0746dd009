//! The `auth` filter: API keys looked up by SHA-256, RBAC from the key's user's role.
//!
//! # Keys
//!
//! The config holds only the SHA-256 of each key (`[[keys]].sha256`); `sluice keys new` prints a
//! key once, with the entry to paste ([`generate_key`], [`key_entry_toml`]). A request presents
//! its key as `Authorization: Bearer <key>`; the filter hashes it and looks the digest up in a
//! table built when the config is loaded, which maps it to a ready-made [`Identity`] (key id,
//! user, org, role and the key's [`Grants`]). A reload builds a new table, so added, removed and
//! disabled keys take effect for the next request.
//!
//! Keys made at runtime (the key API, kept in the engine's store) are looked up next, in the
//! table the engine publishes ([`RuntimeKeys`]) — the same way, by digest, with the same
//! identities (the user's role, narrowed by the key's own `models`) plus an expiry. The filter
//! resolves that table against its config's users once per published table, so neither a store
//! change nor a reload waits for the other, and the request path never reads a database. Each
//! key's use is noted (at most once a second) for the store's `last_used`.
//!
//! # Why a lookup by hash is constant-time enough
//!
//! Comparing a presented key with stored keys byte by byte would leak, through timing, how much
//! of a real key a guess gets right. Here no secret is ever compared: the presented key is
//! hashed (time depends on its length only) and the *digest* is looked up. Whatever timing the
//! table lookup leaks concerns digests, and knowing a digest does not help to produce a key
//! that hashes to it (SHA-256 is preimage resistant, and a generated key carries ≈ 238 bits of
//! entropy, far beyond guessing). The table's buckets are chosen by a randomly keyed SipHash,
//! and its final equality check is constant-time anyway (`KeyDigest`), so even the
//! digest of a weak, imported key does not leak byte by byte.
//!
//! # What never leaves the filter
//!
//! The presented key is borrowed from the request headers, hashed and dropped. It is not
//! copied into the context, a log line (at any level), an error message, a metric or `Debug`
//! output. Unknown, disabled and malformed keys get the same reply, so a caller cannot tell a
//! revoked key from a mistyped one. Forwarding is the engine's side: it replaces the client's
//! `Authorization` with the upstream's own key.
//!
//! # Authorisation
//!
//! Once the body is read and the route, model and agent are known, each route checks the
//! permission it needs (module `rbac`): chat completions `chat` and the model globs, the model
//! list `models:list`, agents `agents:run` and the agent globs, `/v1/embeddings` `embeddings`,
//! any other `/v1/*` `passthrough` (and the model globs when the body names a model).

pub mod jwt;
mod key;
mod lineage;
mod provider;
mod rbac;
mod runtime;
mod users;
pub mod verified;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use prometheus::{IntCounter, IntCounterVec, Opts};

use crate::config::{ConfigError, ConfigErrors};
use crate::policy::{CheckedPolicy, Policy};
use crate::{
    Cx, Filter, Grants, Identity, Permission, Reply, Request, RequestHead, Route, Shared, Verdict,
};

pub use key::{
    generate_key, key_entry_toml, key_sha256_hex, KEY_PREFIX, KEY_RANDOM_CHARS, MAX_KEY_LEN,
};
use key::{parse_credentials, KeyDigest, Presented};
pub use lineage::Lineage;
pub(crate) use runtime::Derived;
pub use runtime::{RuntimeKeys, StoreKey, StoreKeyFields, StoreKeyTable};
pub use users::{
    AuthMethod, AuthoritySlot, RuntimeUsers, StoreUser, StoreUserTable, TokenAuthority,
    TokenRefusal, TokenUser,
};

/// The metric counting refused authentications, by `reason` (`missing` or `invalid`).
pub const FAILURES_METRIC: &str = "sluice_auth_failures_total";

const MISSING_MESSAGE: &str = "You didn't provide an API key. Send it in the \
     `Authorization: Bearer <key>` header (an OpenAI SDK does this with its `api_key` setting); \
     your administrator creates keys with `sluice keys new`.";

/// One message for unknown, disabled and malformed keys alike: which one it was is for the
/// operator's logs, not for whoever holds the key.
const INVALID_MESSAGE: &str = "Incorrect API key provided. Check that the \
     `Authorization: Bearer <key>` header carries the whole key you were given; if it does, \
     the key is no longer valid: ask your administrator for a new one.";

const MISSING_MESSAGE_X_API_KEY: &str = "You didn't provide an API key. Send it in the \
     `x-api-key` header (an Anthropic SDK does this with its `api_key` setting); your \
     administrator creates keys with `sluice keys new`.";

const INVALID_MESSAGE_X_API_KEY: &str = "Incorrect API key provided. Check that the \
     `x-api-key` header carries the whole key you were given; if it does, the key is no longer \
     valid: ask your administrator for a new one.";

/// A refusal told in the terms of the client's API (SPEC §3): a client of Anthropic's routes,
/// or one that sent `x-api-key`, is told about `x-api-key`, not `Authorization: Bearer`.
fn in_clients_terms(reply: Reply, head: &RequestHead<'_>, route: Route) -> Reply {
    let bearer = head.headers.contains_key(http::header::AUTHORIZATION);
    let anthropic = route.anthropic() || head.headers.contains_key("x-api-key");
    if bearer || !anthropic || reply.status != 401 {
        return reply;
    }
    // Only the generic messages name a header; a specific one (which check a provider token
    // failed) is kept as it is.
    let generic = reply
        .error_info
        .as_ref()
        .is_some_and(|e| e.message == INVALID_MESSAGE || e.message == MISSING_MESSAGE);
    match reply.code {
        Some("missing_api_key") => Reply::error(401, "missing_api_key", MISSING_MESSAGE_X_API_KEY),
        Some(code) if generic => Reply::error(401, code, INVALID_MESSAGE_X_API_KEY),
        _ => reply,
    }
}

/// `sluice_auth_failures_total{reason}` (`missing` or `invalid`), registered once per process:
/// the auth filter and the admin listener count into the same series.
pub fn failures_metric(shared: &Shared) -> prometheus::Result<Arc<IntCounterVec>> {
    shared.metric(FAILURES_METRIC, || {
        IntCounterVec::new(
            Opts::new(
                FAILURES_METRIC,
                "Requests refused for a missing or invalid API key or admin token, by reason.",
            ),
            &["reason"],
        )
    })
}

/// The `auth` filter. Build it with [`build`] (or [`AuthFilter::from_policy`]).
pub struct AuthFilter {
    keys: HashMap<KeyDigest, KeyEntry>,
    /// The configured users, for the store's keys.
    users: HashMap<String, ResolvedUser>,
    /// The store's keys ([`RuntimeKeys`]) and this filter's view of them.
    runtime: Arc<RuntimeKeys>,
    store_keys: Derived<HashMap<KeyDigest, KeyEntry>>,
    /// The configured roles, for users the store knows (provider users and their keys).
    roles: HashMap<String, RoleGrants>,
    /// The store's users directory (provider users, `disabled` flags).
    store_users: Arc<RuntimeUsers>,
    /// Verifies provider tokens (installed by the engine with `[identity]`).
    authority: Arc<AuthoritySlot>,
    missing: IntCounter,
    invalid: IntCounter,
}

/// A key (configured, or of the store), resolved to its identity.
struct KeyEntry {
    identity: Identity,
    /// Kept (rather than left out of the table) so that the operator's logs can say a revoked
    /// key is still in use, and by which key id.
    disabled: bool,
    /// Unix seconds (store keys only).
    expires: Option<u64>,
    /// The second of the last use handed to [`RuntimeKeys::touch`], so that a busy key costs
    /// one touch per second.
    last_touch: AtomicU64,
}

/// A configured role, ready to make identities of.
struct RoleGrants {
    role: Arc<str>,
    permissions: Vec<Permission>,
    models: Vec<String>,
    agents: Vec<String>,
    /// The grants of a provider token (no key narrows them).
    token: Arc<Grants>,
}

/// What a request's credential resolved to.
enum Resolved<'h> {
    Identity(Identity),
    /// A provider token, still to be verified (asynchronously).
    Token(&'h str),
}

/// A configured user, with what its keys' identities are made of.
#[derive(Clone)]
struct ResolvedUser {
    org: Arc<str>,
    role: Arc<str>,
    permissions: Vec<Permission>,
    models: Vec<String>,
    agents: Vec<String>,
}

/// Builds the `auth` filter: the [`crate::FilterFactory`] for `type = "auth"`.
pub fn build(
    policy: &Policy<'_>,
    options: &toml::Table,
    path: &str,
    shared: &Shared,
) -> Result<Arc<dyn Filter>, ConfigErrors> {
    Ok(Arc::new(AuthFilter::from_policy(
        policy, options, path, shared,
    )?))
}

impl AuthFilter {
    /// Resolves every key of `policy` to its identity and grants, from the policy as checked
    /// ([`Policy::checked`]: the engine's check of the load, or one made here for an embedder's
    /// policy).
    pub fn from_policy(
        policy: &Policy<'_>,
        options: &toml::Table,
        path: &str,
        shared: &Shared,
    ) -> Result<AuthFilter, ConfigErrors> {
        let mut errs = Vec::new();
        for name in options.keys() {
            errs.push(ConfigError::new(
                format!("{path}.{name}"),
                "unknown option: the auth filter takes none (keys, users and roles are \
                 configured in [[keys]], [[users]] and [[roles]])",
            ));
        }
        let checked = crate::config::together(errs, policy.checked())?;
        let (keys, users, roles) = resolve_keys(policy, &checked);
        // Registered once per process and found again after a reload, so the counts survive it.
        let failures = failures_metric(shared).map_err(|e| {
            ConfigErrors::one(path, format!("cannot register {FAILURES_METRIC}: {e}"))
        })?;
        let runtime = RuntimeKeys::in_shared(shared);
        if keys.is_empty() && runtime.table().is_empty() {
            tracing::warn!(
                "the auth filter is on but no [[keys]] are configured: every request will be \
                 refused with 401 until a key is made in the store (`sluice keys new --store`)"
            );
        }
        Ok(AuthFilter {
            keys,
            users,
            runtime,
            store_keys: Derived::default(),
            roles,
            store_users: RuntimeUsers::in_shared(shared),
            authority: AuthoritySlot::in_shared(shared),
            missing: failures.with_label_values(&["missing"]),
            invalid: failures.with_label_values(&["invalid"]),
        })
    }

    /// How many keys the filter knows (disabled ones included).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The identity a request's headers authenticate as, or the reply refusing it.
    fn authenticate<'h>(
        &self,
        head: &'h RequestHead<'_>,
        route: Route,
        request_id: &str,
    ) -> Result<Resolved<'h>, Reply> {
        // Anthropic's SDKs and Claude Code send their key as `x-api-key`.
        let anthropic = route.anthropic() || head.headers.contains_key(key::ANTHROPIC_VERSION);
        let key = match parse_credentials(head.headers, anthropic) {
            Presented::Key(key) => key,
            Presented::Missing => {
                self.missing.inc();
                tracing::debug!(request_id, "refused: no API key");
                return Err(Reply::error(401, "missing_api_key", MISSING_MESSAGE));
            }
            Presented::Malformed(why) => {
                self.invalid.inc();
                tracing::debug!(request_id, why, "refused: malformed API key");
                return Err(Reply::error(401, "invalid_api_key", INVALID_MESSAGE));
            }
        };
        if jwt::looks_like_jwt(key) {
            if let Ok(token) = std::str::from_utf8(key) {
                return Ok(Resolved::Token(token));
            }
        }
        if key.len() > MAX_KEY_LEN {
            self.invalid.inc();
            return Err(Reply::error(401, "invalid_api_key", INVALID_MESSAGE));
        }
        let digest = KeyDigest::of(key);
        if let Some(entry) = self.keys.get(&digest) {
            return self.admit(entry, request_id).map(Resolved::Identity);
        }
        let store = self.store_entries();
        match store.1.get(&digest) {
            Some(entry) => self.admit(entry, request_id).map(Resolved::Identity),
            None => {
                self.invalid.inc();
                tracing::debug!(request_id, "refused: unknown API key");
                Err(Reply::error(401, "invalid_api_key", INVALID_MESSAGE))
            }
        }
    }

    /// The identity of a known key, unless it is disabled or expired.
    fn admit(&self, entry: &KeyEntry, request_id: &str) -> Result<Identity, Reply> {
        let now = crate::clock::unix_secs();
        let refused = if entry.disabled {
            Some("disabled")
        } else if self.store_users.is_disabled(&entry.identity.user) {
            Some("disabled user's")
        } else if entry.expires.is_some_and(|e| now >= e) {
            Some("expired")
        } else {
            None
        };
        if let Some(why) = refused {
            self.invalid.inc();
            tracing::debug!(request_id, key_id = %entry.identity.key_id, "refused: {why} API key");
            return Err(Reply::error(401, "invalid_api_key", INVALID_MESSAGE));
        }
        if entry.last_touch.swap(now, Ordering::Relaxed) != now {
            self.runtime.touch(&entry.identity.key_id, now);
        }
        Ok(entry.identity.clone())
    }

    /// The store's keys resolved against this config's users, rebuilt when the store changed.
    fn store_entries(&self) -> Arc<(u64, HashMap<KeyDigest, KeyEntry>)> {
        let table = self.runtime.table();
        self.store_keys.get(&table, |t| self.resolve_store_keys(t))
    }

    fn resolve_store_keys(&self, table: &StoreKeyTable) -> HashMap<KeyDigest, KeyEntry> {
        let config: HashMap<&str, bool> = self
            .keys
            .values()
            .map(|e| (&*e.identity.key_id, e.disabled))
            .collect();
        let mut out = HashMap::with_capacity(table.len());
        for k in table.iter() {
            if config.contains_key(&*k.id) || self.keys.contains_key(k.digest()) {
                tracing::warn!(key_id = %k.id, "a store key has the id or the hash of a [[keys]] entry: the config's entry wins");
                continue;
            }
            // A key whose user is neither in the config nor a provider user of the store's
            // directory authenticates nobody.
            let line = Lineage::of(k, table, &config);
            let Some(u) = self.users.get(&k.user) else {
                if let Some(e) = self.directory_key_entry(k, line) {
                    out.insert(*k.digest(), e);
                }
                continue;
            };
            out.insert(*k.digest(), store_key_entry(k, u.clone(), line));
        }
        out
    }
}

/// A store key's entry: its owner's org, role and grants (a configured user's, or a provider
/// user's role), narrowed by the key's own models; refused with its ancestors.
fn store_key_entry(k: &StoreKey, owner: ResolvedUser, line: Lineage) -> KeyEntry {
    let grants = Grants {
        permissions: owner.permissions,
        models: owner.models,
        key_models: k.models.clone(),
        agents: owner.agents,
    };
    let identity = Identity {
        key_id: k.id.clone(),
        user: Arc::from(k.user.as_str()),
        org: owner.org,
        role: owner.role,
        grants: Arc::new(grants),
        ancestors: line.ancestors.into(),
    };
    entry(identity, k.disabled || line.disabled, line.expires)
}

fn entry(identity: Identity, disabled: bool, expires: Option<u64>) -> KeyEntry {
    KeyEntry {
        identity,
        disabled,
        expires,
        last_touch: AtomicU64::new(0),
    }
}

/// Builds the digest → identity table (and the users the store's keys resolve against) from a
/// policy [`Policy::check`] found sound: every reference resolves, nothing is checked again.
#[allow(clippy::type_complexity)]
fn resolve_keys(
    policy: &Policy<'_>,
    checked: &CheckedPolicy,
) -> (
    HashMap<KeyDigest, KeyEntry>,
    HashMap<String, ResolvedUser>,
    HashMap<String, RoleGrants>,
) {
    let roles: HashMap<&str, (Vec<Permission>, &crate::policy::RoleConfig)> = policy
        .roles
        .iter()
        .zip(&checked.permissions)
        .map(|(r, p)| (r.name.as_str(), (p.clone(), r)))
        .collect();
    let users: HashMap<&str, &crate::policy::UserConfig> =
        policy.users.iter().map(|u| (u.name.as_str(), u)).collect();

    let mut table = HashMap::with_capacity(policy.keys.len());
    for (i, (k, digest)) in policy.keys.iter().zip(&checked.digests).enumerate() {
        let digest = KeyDigest::from_bytes(*digest);
        let Some(user) = users.get(k.user.as_str()).copied() else {
            continue;
        };
        let Some((permissions, role)) = roles.get(user.role.as_str()) else {
            continue;
        };
        let grants = Grants {
            permissions: permissions.clone(),
            models: role.models.clone(),
            key_models: k.models.clone(),
            agents: role.agents.clone(),
        };
        if k.models.is_some()
            && !policy.models.is_empty()
            && !policy.models.iter().any(|m| grants.may_use_model(m))
        {
            // Legal (a key may be narrowed to nothing), but more likely a typo than intent.
            tracing::warn!(
                key_id = %k.id,
                "keys[{i}].models and its role `{}` have no configured model in common: the key may use no model",
                role.name
            );
        }
        let identity = Identity {
            key_id: Arc::from(k.id.as_str()),
            user: Arc::from(user.name.as_str()),
            org: Arc::from(user.org.as_str()),
            role: Arc::from(role.name.as_str()),
            grants: Arc::new(grants),
            ancestors: Arc::from([]),
        };
        table.insert(digest, entry(identity, k.disabled, None));
    }
    let resolved = users
        .values()
        .filter_map(|u| {
            let (permissions, role) = roles.get(u.role.as_str())?;
            Some((
                u.name.clone(),
                ResolvedUser {
                    org: Arc::from(u.org.as_str()),
                    role: Arc::from(role.name.as_str()),
                    permissions: permissions.clone(),
                    models: role.models.clone(),
                    agents: role.agents.clone(),
                },
            ))
        })
        .collect();
    let role_grants = roles
        .iter()
        .map(|(name, (permissions, r))| {
            let token = Grants {
                permissions: permissions.clone(),
                models: r.models.clone(),
                key_models: None,
                agents: r.agents.clone(),
            };
            let g = RoleGrants {
                role: Arc::from(*name),
                permissions: permissions.clone(),
                models: r.models.clone(),
                agents: r.agents.clone(),
                token: Arc::new(token),
            };
            (name.to_string(), g)
        })
        .collect();
    (table, resolved, role_grants)
}

/// Shows key ids only: never a key, never a digest.
impl fmt::Debug for AuthFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<(&str, bool)> = self
            .keys
            .values()
            .map(|e| (&*e.identity.key_id, e.disabled))
            .collect();
        ids.sort_unstable();
        let (enabled, disabled): (Vec<_>, Vec<_>) = ids.into_iter().partition(|(_, d)| !d);
        f.debug_struct("AuthFilter")
            .field(
                "keys",
                &enabled.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .field(
                "disabled_keys",
                &disabled.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[async_trait]
impl Filter for AuthFilter {
    fn name(&self) -> &str {
        "auth"
    }

    async fn on_request_head(&self, head: &RequestHead<'_>, cx: &mut Cx) -> Verdict {
        // The engine's own background requests carry the identity of the caller who started
        // them (an asynchronous agent run); only the engine sets this marker.
        if cx.identity.is_some() && cx.extensions.get::<crate::PreAuthenticated>().is_some() {
            return Verdict::Continue;
        }
        let resolved = match self.authenticate(head, cx.route, &cx.request_id) {
            Ok(Resolved::Token(token)) => self
                .authenticate_token(token, &cx.request_id)
                .await
                .map(|i| (i, AuthMethod::Jwt)),
            Ok(Resolved::Identity(i)) => Ok((i, AuthMethod::Key)),
            Err(reply) => Err(reply),
        };
        match resolved {
            Ok((identity, method)) => {
                cx.identity = Some(identity);
                cx.extensions.insert(method);
                Verdict::Continue
            }
            Err(reply) => {
                // Nothing a filter before us put there may survive a refused authentication.
                cx.identity = None;
                Verdict::Respond(in_clients_terms(reply, head, cx.route))
            }
        }
    }

    async fn on_request(&self, _req: &mut Request<'_>, cx: &mut Cx) -> Verdict {
        let Some(identity) = cx.identity.as_ref() else {
            // Only reachable if something cleared the identity after `on_request_head`: fail
            // closed rather than authorise an anonymous request.
            self.missing.inc();
            return Verdict::Respond(Reply::error(401, "missing_api_key", MISSING_MESSAGE));
        };
        match rbac::authorize(identity, cx) {
            Ok(()) => Verdict::Continue,
            Err(reply) => {
                tracing::debug!(
                    request_id = %cx.request_id,
                    key_id = %identity.key_id,
                    code = reply.code.unwrap_or(""),
                    "refused by role"
                );
                Verdict::Respond(reply)
            }
        }
    }
}
