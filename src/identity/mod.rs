//! Identity from the organisation's OpenID Connect provider (SPEC §13).
//!
//! ```text
//!  request (Pingora thread)                          control runtime
//!  auth filter ── JWT? ── IdentityService ──────────  Provider: discovery, JWKS cache,
//!                          │ verify (sluice-filters,    refetch on unknown kid ≤ 1/min
//!                          │  cached keys: no I/O)
//!                          │ groups → org/role (first identity.roles match)
//!                          └ sighting (memory) ─────► writer: users table, batched each second
//! ```
//!
//! The request path reads memory only: the key set, the users directory
//! ([`sluice_filters::auth::RuntimeUsers`], kept current by the store sync) and the time this
//! instance last recorded each user. A user is written to the store on first sight, when its
//! org or role changes (both at once), and otherwise at most once per [`SEEN_EVERY`] (its
//! `last_seen`).
//!
//! For the console: [`IdentityService::discovery`] (authorization and token endpoints),
//! [`IdentityService::verify_id_token`] (ID token with `nonce`) and
//! [`IdentityService::sign_in`] (claims → org/role, user recorded) are the whole interface;
//! [`service`] finds the running instance.

pub mod admin;
pub mod config;
pub mod provider;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use sluice_filters::auth::jwt::{Claims, TokenError};
use sluice_filters::auth::{AuthoritySlot, TokenAuthority, TokenRefusal, TokenUser};
use sluice_filters::Shared;
use tokio::sync::{watch, Notify};

pub use config::{IdentityConfig, RoleRule};
pub use provider::{Discovery, Provider};

use crate::store::{Sighting, StoreRuntime};

/// How often a known user's `last_seen` is written.
pub const SEEN_EVERY: Duration = Duration::from_secs(60);
/// How many sightings may wait for the writer (beyond that, `last_seen` refreshes are dropped
/// until it catches up; new users and role changes are kept).
const MAX_PENDING: usize = 10_000;
/// The longest user name taken from a token.
const MAX_USERNAME: usize = 256;

const SERVICE_KEY: &str = "identity:service";

/// The running identity service, once [`start`] installed one.
#[derive(Default)]
pub struct ServiceSlot(ArcSwapOption<IdentityService>);

/// The running instance (none without `[identity]`).
pub fn service(shared: &Shared) -> Option<Arc<IdentityService>> {
    slot(shared).0.load_full()
}

fn slot(shared: &Shared) -> Arc<ServiceSlot> {
    shared
        .get_or_try_init(SERVICE_KEY, || {
            Ok::<_, std::convert::Infallible>(ServiceSlot::default())
        })
        .unwrap_or_else(|never| match never {})
}

/// The provider, the mapping rules and the writer of sightings.
pub struct IdentityService {
    provider: Arc<Provider>,
    config: IdentityConfig,
    store: Arc<StoreRuntime>,
    /// When this instance last recorded each user (Unix seconds), and with which org/role.
    recorded: Mutex<HashMap<String, (i64, String, String)>>,
    pending: Mutex<HashMap<String, Sighting>>,
    wake: Notify,
}

impl IdentityService {
    /// The provider (discovery document, key set).
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// The discovery document (authorization and token endpoints), once loaded.
    pub fn discovery(&self) -> Option<Arc<Discovery>> {
        self.provider.discovery()
    }

    /// Verifies an ID token from the authorization code flow: signature, `iss`, `aud` = the
    /// client id, `exp`/`nbf`, and `nonce` equal to the one the sign-in started with.
    pub async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<Claims, TokenError> {
        self.provider.verify_id_token(token, nonce).await
    }

    /// Maps verified claims to a user (first `identity.roles` rule matching a group) and
    /// records the sighting (store write behind, never awaited). `NoRole`: nothing stored.
    pub fn sign_in(&self, claims: &Claims) -> Result<TokenUser, TokenRefusal> {
        let claim = &self.config.username_claim;
        let name = claims
            .string(claim)
            .filter(|n| {
                !n.is_empty() && n.len() <= MAX_USERNAME && !n.chars().any(char::is_control)
            })
            .ok_or_else(|| {
                TokenRefusal::Invalid(TokenError::MissingClaim(claim.clone()).message())
            })?;
        let groups = claims.strings(&self.config.groups_claim);
        let rule = self.config.roles.iter().find(|r| {
            r.group == "*"
                || groups
                    .iter()
                    .any(|g| sluice_filters::glob_match(&r.group, g))
        });
        let Some(rule) = rule else {
            return Err(TokenRefusal::NoRole(format!(
                "You are signed in, but none of your groups (claim `{}`) is given access to this \
                 gateway (identity.roles); ask your administrator.",
                self.config.groups_claim
            )));
        };
        self.note(name, &rule.org, &rule.role);
        Ok(TokenUser {
            name: Arc::from(name),
            org: Arc::from(rule.org.as_str()),
            role: Arc::from(rule.role.as_str()),
        })
    }

    /// Queues a sighting when the store must hear of it; memory only.
    fn note(&self, name: &str, org: &str, role: &str) {
        let now = crate::store::now_secs();
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match recorded.get(name) {
            Some((_, o, r)) => o != org || r != role,
            None => {
                let dir = self.store.users().table();
                !dir.get(name).is_some_and(|u| {
                    u.org.as_deref() == Some(org) && u.role.as_deref() == Some(role)
                })
            }
        };
        let due = recorded
            .get(name)
            .is_none_or(|(at, _, _)| now - at >= SEEN_EVERY.as_secs() as i64);
        if !changed && !due {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !changed && pending.len() >= MAX_PENDING {
            return;
        }
        recorded.insert(name.to_string(), (now, org.to_string(), role.to_string()));
        let s = Sighting {
            name: name.to_string(),
            org: org.to_string(),
            role: role.to_string(),
            at: now,
            changed: changed || pending.get(name).is_some_and(|p| p.changed),
        };
        pending.insert(name.to_string(), s);
        drop(pending);
        drop(recorded);
        if changed {
            self.wake.notify_one();
        }
    }

    /// Writes queued sightings: at once for new users and role changes, else each second.
    async fn write_sightings(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => { self.flush().await; return; }
            }
            self.flush().await;
        }
    }

    async fn flush(&self) {
        let batch: Vec<Sighting> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().map(|(_, s)| s).collect()
        };
        if batch.is_empty() {
            return;
        }
        match self.store.store().record_sightings(&batch).await {
            Ok(()) => {
                for s in batch.iter().filter(|s| s.changed) {
                    tracing::info!(user = %s.name, org = %s.org, role = %s.role, "identity: user recorded");
                    let known = self.store.users().table().get(&s.name).cloned();
                    self.store.put_user(sluice_filters::auth::StoreUser {
                        name: s.name.clone(),
                        source: known.as_ref().map_or("oidc".into(), |u| u.source.clone()),
                        org: Some(s.org.clone()),
                        role: Some(s.role.clone()),
                        disabled: known.is_some_and(|u| u.disabled),
                        last_seen: Some(s.at.max(0) as u64),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, users = batch.len(), "identity: cannot record users; will retry");
                let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for s in batch {
                    if s.changed {
                        // Seen again as changed next time, so it is retried.
                        recorded.remove(&s.name);
                    }
                    if pending.len() < MAX_PENDING {
                        pending.entry(s.name.clone()).or_insert(s);
                    }
                }
            }
        }
    }
}

/// The auth filter's view of the service.
struct Authority(Arc<IdentityService>);

#[async_trait]
impl TokenAuthority for Authority {
    async fn authenticate(&self, token: &str) -> Result<TokenUser, TokenRefusal> {
        let claims = self
            .0
            .provider
            .verify_access_token(token)
            .await
            .map_err(|e| {
                tracing::debug!(check = e.check(), "provider token refused");
                TokenRefusal::Invalid(e.message())
            })?;
        self.0.sign_in(&claims)
    }
}

/// Starts the service for `[identity]`: loads discovery and the JWKS (bounded; a provider
/// that is down only delays tokens, never the gateway), installs the authority the auth filter
/// asks, and spawns the refresh and the sightings writer on the control runtime.
pub fn start(
    cfg: &IdentityConfig,
    shared: &Shared,
    store: Arc<StoreRuntime>,
    control: &tokio::runtime::Runtime,
    stop: watch::Receiver<bool>,
) -> Result<Arc<IdentityService>, String> {
    let provider = Arc::new(Provider::new(cfg, control.handle().clone())?);
    match control.block_on(provider.load()) {
        Ok(n) => tracing::info!(issuer = %cfg.issuer, keys = n, "identity: provider keys loaded"),
        Err(e) => {
            tracing::warn!(error = %e, "identity: the provider cannot be reached yet; tokens are refused until it can")
        }
    }
    let service = Arc::new(IdentityService {
        provider: provider.clone(),
        config: cfg.clone(),
        store,
        recorded: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        wake: Notify::new(),
    });
    provider.spawn_refresh(stop.clone());
    control.spawn(service.clone().write_sightings(stop));
    AuthoritySlot::in_shared(shared).install(Some(Box::new(Authority(service.clone()))));
    slot(shared).0.store(Some(service.clone()));
    Ok(service)
}

/// `sluice check --online`: fetches discovery and the JWKS once.
pub fn check_online(cfg: &IdentityConfig) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let provider = Arc::new(Provider::new(cfg, rt.handle().clone())?);
    let n = rt.block_on(provider.load())?;
    let d = provider.discovery();
    Ok(format!(
        "identity: {} answers (discovery ok, jwks_uri {}, {n} signing key(s))",
        cfg.issuer,
        d.map(|d| d.jwks_uri.clone()).unwrap_or_default()
    ))
}

/// The latest a key made by `user` may expire: `identity.key_max_days` from now for a
/// provider user (one without a `[[users]]` entry), else no bound.
pub fn key_expiry_cap(config: &crate::Config, user: &str) -> Option<i64> {
    let identity = config.identity.as_ref()?;
    if config.users.iter().any(|u| u.name == user) {
        return None;
    }
    Some(crate::store::now_secs() + identity.key_max_days as i64 * 86_400)
}
