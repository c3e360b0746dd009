//! The provider's discovery document and signing keys: fetched at start, cached, fetched again
//! when a token names a `kid` the cache lacks — at most once a minute (the first load does not
//! count), so a rotated key works at once and a stream of made-up `kid`s costs the provider one
//! request a minute. Verifying with a cached key costs no network round trip.
//!
//! Fetches run on the control runtime (the Pingora threads only wait for them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Deserialize;
use sluice_filters::auth::jwt::{self, Claims, ProviderKeys, TokenError, TokenRules};

use super::config::{check_issuer, IdentityConfig};

/// How often an unknown `kid` may make us fetch the JWKS again.
pub const REFETCH_EVERY: Duration = Duration::from_secs(60);
/// How often the keys are refreshed anyway (a key the provider withdrew stops verifying).
const REFRESH_EVERY: Duration = Duration::from_secs(15 * 60);
/// While the first load has not succeeded, how often a token may trigger another try.
const RETRY_FIRST_LOAD: Duration = Duration::from_secs(5);
/// Bound on one fetch, and on a discovery document or JWKS.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOCUMENT: usize = 512 * 1024;

/// What Sluice reads from the discovery document (the console needs the endpoints).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

#[derive(Default)]
struct Refetch {
    /// When an unknown `kid` last made us fetch (the first load excluded).
    last: Option<Instant>,
    /// When the last attempt at the first load failed.
    failed_first: Option<Instant>,
}

/// The provider as this process knows it.
pub struct Provider {
    issuer: String,
    client_id: String,
    http: reqwest::Client,
    control: tokio::runtime::Handle,
    discovery: ArcSwapOption<Discovery>,
    keys: ArcSwapOption<ProviderKeys>,
    access: TokenRules,
    id_tokens: TokenRules,
    refetch: tokio::sync::Mutex<Refetch>,
    /// JWKS fetches made (the first load included), for logs and tests.
    fetches: std::sync::atomic::AtomicU64,
    /// Access tokens already verified (see `verified.rs`).
    verified: sluice_filters::auth::verified::VerifiedTokens,
}

impl Provider {
    /// A provider with nothing loaded yet; fetches run on `control`.
    pub fn new(cfg: &IdentityConfig, control: tokio::runtime::Handle) -> Result<Provider, String> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Provider {
            issuer: cfg.issuer.clone(),
            client_id: cfg.client_id.clone(),
            http,
            control,
            discovery: ArcSwapOption::empty(),
            keys: ArcSwapOption::empty(),
            access: TokenRules::new(&cfg.issuer, &cfg.audiences),
            id_tokens: TokenRules::for_audience(&cfg.issuer, &cfg.client_id),
            refetch: tokio::sync::Mutex::new(Refetch::default()),
            fetches: Default::default(),
            verified: Default::default(),
        })
    }

    /// The discovery document, once loaded.
    pub fn discovery(&self) -> Option<Arc<Discovery>> {
        self.discovery.load_full()
    }

    /// The client id ID tokens are addressed to.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// JWKS fetches so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches discovery and the JWKS (the first load, or a scheduled refresh: neither counts
    /// against the unknown-`kid` limit).
    pub async fn load(self: &Arc<Self>) -> Result<usize, String> {
        let this = self.clone();
        let job = async move {
            let d = this.fetch_discovery().await?;
            let keys = this.fetch_jwks(&d.jwks_uri).await?;
            let n = keys.len();
            this.discovery.store(Some(Arc::new(d)));
            this.keys.store(Some(Arc::new(keys)));
            Ok::<usize, String>(n)
        };
        self.control
            .spawn(job)
            .await
            .map_err(|e| format!("fetch task: {e}"))?
    }

    async fn get(&self, url: &str, what: &str) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot fetch the {what} {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the {what} {url} answered {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(format!(
                "the {what} {url} is larger than {MAX_DOCUMENT} bytes"
            ));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the {what} {url}: {e}"))?;
        if body.len() > MAX_DOCUMENT {
            return Err(format!(
                "the {what} {url} is larger than {MAX_DOCUMENT} bytes"
            ));
        }
        Ok(body.to_vec())
    }

    async fn fetch_discovery(&self) -> Result<Discovery, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get(&url, "discovery document").await?;
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("the discovery document {url} cannot be read: {e}"))?;
        if d.issuer != self.issuer {
            return Err(format!(
                "the discovery document names the issuer `{}`, not identity.issuer `{}` \
                 (they must be equal, character for character)",
                d.issuer, self.issuer
            ));
        }
        let jwks_ok = d.jwks_uri.starts_with("https://")
            || (d.jwks_uri.starts_with("http://") && check_issuer(&d.jwks_uri).is_ok());
        if !jwks_ok {
            return Err(format!(
                "the discovery document's jwks_uri `{}` is not https://",
                d.jwks_uri
            ));
        }
        Ok(d)
    }

    async fn fetch_jwks(&self, url: &str) -> Result<ProviderKeys, String> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = self.get(url, "JWKS").await?;
        ProviderKeys::from_jwks(&body).map_err(|e| format!("{url}: {e}"))
    }

    /// Keys that know `kid`, fetching again when allowed.
    async fn keys_for(self: &Arc<Self>, kid: Option<&str>) -> Option<Arc<ProviderKeys>> {
        let known = |k: &Option<Arc<ProviderKeys>>| match (k, kid) {
            (Some(keys), Some(kid)) => keys.has_kid(kid),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let current = self.keys.load_full();
        if known(&current) {
            return current;
        }
        let mut state = self.refetch.lock().await;
        // Another request may have fetched while this one waited.
        let current = self.keys.load_full();
        if known(&current) {
            return current;
        }
        let now = Instant::now();
        if current.is_none() {
            if state
                .failed_first
                .is_some_and(|t| now - t < RETRY_FIRST_LOAD)
            {
                return None;
            }
            if let Err(e) = self.load().await {
                tracing::warn!(error = %e, "identity: the provider's keys cannot be loaded");
                state.failed_first = Some(now);
            }
            return self.keys.load_full();
        }
        if state.last.is_some_and(|t| now - t < REFETCH_EVERY) {
            return current;
        }
        state.last = Some(now);
        match self.load().await {
            Ok(n) => tracing::info!(keys = n, "identity: JWKS fetched again for an unknown kid"),
            Err(e) => tracing::warn!(error = %e, "identity: JWKS refetch failed"),
        }
        self.keys.load_full()
    }

    /// Verifies an access token (`aud` one of `identity.audiences`).
    pub async fn verify_access_token(self: &Arc<Self>, token: &str) -> Result<Claims, TokenError> {
        let kid = jwt::token_kid(token)?;
        let Some(keys) = self.keys_for(kid.as_deref()).await else {
            return Err(TokenError::KeysUnavailable);
        };
        if let Some(claims) = self.verified.get(token, &keys) {
            return Ok(claims);
        }
        let claims = jwt::verify(token, &keys, &self.access)?;
        self.verified.put(token, &keys, &claims);
        Ok(claims)
    }

    /// Verifies an ID token (`aud` the client id) and its `nonce` (for the console's sign-in).
    pub async fn verify_id_token(
        self: &Arc<Self>,
        token: &str,
        nonce: &str,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify(token, &self.id_tokens).await?;
        match claims.string("nonce") {
            Some(n) if n == nonce => Ok(claims),
            _ => Err(TokenError::MissingClaim("nonce".into())),
        }
    }

    async fn verify(
        self: &Arc<Self>,
        token: &str,
        rules: &TokenRules,
    ) -> Result<Claims, TokenError> {
        let kid = jwt::token_kid(token)?;
        let Some(keys) = self.keys_for(kid.as_deref()).await else {
            return Err(TokenError::KeysUnavailable);
        };
        jwt::verify(token, &keys, rules)
    }

    /// Refreshes the keys every [`REFRESH_EVERY`] until `stop` changes.
    pub fn spawn_refresh(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let this = self.clone();
        self.control.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REFRESH_EVERY) => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = this.load().await {
                    tracing::warn!(error = %e, "identity: scheduled JWKS refresh failed");
                }
            }
        });
    }
}
