//! Access tokens already verified, so that a client presenting the same token call after call
//! (an agent, an SDK) pays for its signature once, not per request: RS256 verification is tens
//! of microseconds, more than the rest of the chain (`IDENTITY=1 benches/overhead.sh`).
//!
//! Only a token whose signature and claims passed is kept, under the SHA-256 of its text, with
//! the key set it was verified against: when the provider's keys are loaded again (rotation, the
//! scheduled refresh) every entry is stale and the token is verified afresh. `exp` is checked on
//! every use with the same leeway as the first check; `nbf` only ever passes once it has. The
//! cache is bounded: when full it is emptied (a client with a valid token just pays once more).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::jwt::{Claims, ProviderKeys, LEEWAY_SECONDS};
use sha2::{Digest, Sha256};

/// How many verified tokens are kept at most.
const CAPACITY: usize = 4096;

struct Entry {
    claims: Claims,
    exp: i64,
    keys: Arc<ProviderKeys>,
}

/// Verified access tokens by the SHA-256 of their text.
#[derive(Default)]
pub struct VerifiedTokens {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    /// The claims of `token` if it was verified against `keys` and has not expired.
    pub fn get(&self, token: &str, keys: &Arc<ProviderKeys>) -> Option<Claims> {
        let id = digest(token);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(&id)?;
        let now = i64::try_from(crate::clock::unix_secs()).unwrap_or(i64::MAX);
        let live = now <= e.exp.saturating_add(LEEWAY_SECONDS as i64);
        if live && Arc::ptr_eq(&e.keys, keys) {
            return Some(e.claims.clone());
        }
        map.remove(&id);
        None
    }

    /// Keeps `token`'s verified claims (a token without a numeric `exp` is not kept).
    pub fn put(&self, token: &str, keys: &Arc<ProviderKeys>, claims: &Claims) {
        let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64) else {
            return;
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(
            digest(token),
            Entry {
                claims: claims.clone(),
                exp,
                keys: keys.clone(),
            },
        );
    }
}
