//! Access tokens of an OpenID Connect provider (SPEC §13): pure verification of a JWT against a
//! key set the engine hands in. No network, no clock but the system's, no state.
//!
//! The order of the checks is deliberate:
//!
//! 1. The header is read by us (not by the JOSE library) so that `alg: none` and the HMAC
//!    family are refused by name, before any key is touched. This also closes the classic
//!    confusion attack (an `HS256` token whose "secret" is the provider's *public* key): an
//!    HMAC token never reaches a verifier, whatever key it names.
//! 2. The key is chosen by `kid` among the provider's published keys, and must be of the family
//!    the header's `alg` belongs to (and of that very `alg` when the JWK names one).
//! 3. The signature, then `iss` (exactly), `aud` (one of the accepted audiences), `exp` and
//!    `nbf` with [`LEEWAY_SECONDS`] of skew — by `jsonwebtoken` (ring underneath), never by
//!    hand-written cryptography.
//!
//! A failure is a [`TokenError`] whose message names the failed check and never echoes any part
//! of the token.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Clock skew accepted on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 60;

/// The longest token the gateway reads (provider tokens with many groups run to a few KiB).
pub const MAX_TOKEN_LEN: usize = 8192;

/// The signature algorithms accepted (SPEC §13). HMAC and `none` are absent on purpose.
pub const ALLOWED: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Whether `credential` has the shape of a compact JWS (`xxx.yyy.zzz`, base64url segments): such
/// a credential is a provider token, never a Sluice key (keys contain no dots).
pub fn looks_like_jwt(credential: &[u8]) -> bool {
    credential.len() <= MAX_TOKEN_LEN
        && credential.iter().filter(|b| **b == b'.').count() == 2
        && credential
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// Why a token was refused. [`TokenError::message`] is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a compact JWS with a JSON header and payload.
    Malformed,
    /// `alg` is `none`, HMAC, or otherwise not in [`ALLOWED`].
    Algorithm(String),
    /// No published key has the token's `kid` (or the token names none and several could do).
    UnknownKey,
    /// The key named is not of the `alg`'s kind.
    KeyMismatch,
    /// The provider's keys could not be loaded yet (it is unreachable).
    KeysUnavailable,
    Signature,
    Issuer,
    Audience,
    Expired,
    NotYetValid,
    /// A claim the gateway needs is absent or of the wrong type.
    MissingClaim(String),
}

impl TokenError {
    /// The client-facing reason: names the check, never echoes the token.
    pub fn message(&self) -> String {
        let what = match self {
            TokenError::Malformed => "it is not a well-formed JWT".to_string(),
            TokenError::Algorithm(alg) => format!(
                "its signature algorithm `{}` is not accepted (accepted: RS256, RS384, RS512, \
                 PS256, ES256, ES384, EdDSA; `none` and HMAC never are)",
                printable(alg)
            ),
            TokenError::UnknownKey => {
                "it is signed with a key (`kid`) the identity provider does not publish".into()
            }
            TokenError::KeyMismatch => {
                "its `alg` does not match the type of the provider key it names".into()
            }
            TokenError::KeysUnavailable => {
                "the identity provider's signing keys cannot be loaded right now (retry shortly)"
                    .into()
            }
            TokenError::Signature => "its signature does not verify".into(),
            TokenError::Issuer => {
                "its issuer (`iss`) is not this gateway's identity provider".into()
            }
            TokenError::Audience => {
                "its audience (`aud`) is not one this gateway accepts (identity.audiences)".into()
            }
            TokenError::Expired => "it has expired (`exp`)".into(),
            TokenError::NotYetValid => "it is not valid yet (`nbf`)".into(),
            TokenError::MissingClaim(c) => format!("it lacks the `{}` claim", printable(c)),
        };
        format!("The access token was refused: {what}. Sign in again to get a fresh token.")
    }

    /// A short label for logs and metrics.
    pub fn check(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm(_) => "alg",
            TokenError::UnknownKey => "kid",
            TokenError::KeyMismatch => "key_type",
            TokenError::KeysUnavailable => "jwks",
            TokenError::Signature => "signature",
            TokenError::Issuer => "iss",
            TokenError::Audience => "aud",
            TokenError::Expired => "exp",
            TokenError::NotYetValid => "nbf",
            TokenError::MissingClaim(_) => "claim",
        }
    }
}

/// At most 32 safe characters of a header value (an `alg` is chosen by whoever made the token).
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(32)
        .collect()
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.check())
    }
}

/// One published key, ready to verify with.
#[derive(Clone)]
struct ProviderKey {
    key: DecodingKey,
    family: Family,
    /// The JWK's own `alg`, when it names one: then only that algorithm may use it.
    alg: Option<Algorithm>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

/// The provider's signing keys (its JWKS), by `kid`. Symmetric (`oct`) keys are never loaded.
#[derive(Clone, Default)]
pub struct ProviderKeys {
    by_kid: HashMap<String, ProviderKey>,
    /// Keys published without a `kid` (used only by tokens that name none).
    anonymous: Vec<ProviderKey>,
}

impl ProviderKeys {
    /// Reads a JWKS document. Keys that cannot sign an allowed algorithm (`oct`, encryption
    /// keys, unknown types) are skipped; a document with no usable key is an error.
    pub fn from_jwks(json: &[u8]) -> Result<ProviderKeys, String> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| format!("the JWKS is not a JSON Web Key Set: {e}"))?;
        let mut keys = ProviderKeys::default();
        for jwk in &set.keys {
            let Some(k) = provider_key(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), k);
                }
                None => keys.anonymous.push(k),
            }
        }
        if keys.is_empty() {
            return Err("the JWKS holds no signing key of an accepted type (RSA, EC, OKP)".into());
        }
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a key with this `kid` is published.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    fn find(&self, kid: Option<&str>) -> Option<&ProviderKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.len() == 1 => self.by_kid.values().chain(&self.anonymous).next(),
            None => None,
        }
    }
}

fn provider_key(jwk: &Jwk) -> Option<ProviderKey> {
    use jsonwebtoken::jwk::PublicKeyUse;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(a.to_string().parse::<Algorithm>().ok()?),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(ProviderKey { key, family, alg })
}

/// What a token must say to be accepted.
pub struct TokenRules {
    /// One validation per accepted algorithm (`jsonwebtoken` wants the key's family to match
    /// every algorithm listed), with `iss`, `aud`, `exp`, `nbf` and the leeway.
    validations: Vec<(Algorithm, Validation)>,
}

impl TokenRules {
    pub fn new(issuer: &str, audiences: &[String]) -> TokenRules {
        let validations = ALLOWED
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = LEEWAY_SECONDS;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.set_issuer(&[issuer]);
                v.set_audience(audiences);
                (*alg, v)
            })
            .collect();
        TokenRules { validations }
    }

    /// The same checks with another audience (ID tokens are addressed to the client id).
    pub fn for_audience(issuer: &str, audience: &str) -> TokenRules {
        TokenRules::new(issuer, &[audience.to_string()])
    }
}

/// A verified token's claims.
#[derive(Debug, Clone)]
pub struct Claims(serde_json::Map<String, serde_json::Value>);

impl Claims {
    /// A string claim.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.as_str())
    }

    /// A claim holding strings: an array of strings (others skipped) or one string.
    pub fn strings(&self, name: &str) -> Vec<&str> {
        match self.0.get(name) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        }
    }

    /// Every claim (for ID-token checks such as `nonce`).
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name)
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The `kid` a token names, after its header passed the algorithm check: the engine uses it to
/// decide whether its key set must be fetched again before [`verify`].
pub fn token_kid(token: &str) -> Result<Option<String>, TokenError> {
    read_header(token).map(|(_, kid)| kid)
}

fn read_header(token: &str) -> Result<(Algorithm, Option<String>), TokenError> {
    if !looks_like_jwt(token.as_bytes()) {
        return Err(TokenError::Malformed);
    }
    let head = token.split('.').next().ok_or(TokenError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let alg = raw
        .alg
        .parse::<Algorithm>()
        .ok()
        .filter(|a| ALLOWED.contains(a))
        .ok_or(TokenError::Algorithm(raw.alg))?;
    Ok((alg, raw.kid))
}

/// Verifies `token` against `keys` and `rules`: header, key, signature, then claims.
pub fn verify(token: &str, keys: &ProviderKeys, rules: &TokenRules) -> Result<Claims, TokenError> {
    let (alg, kid) = read_header(token)?;
    let key = keys.find(kid.as_deref()).ok_or(TokenError::UnknownKey)?;
    if Some(key.family) != family_of(alg) || key.alg.is_some_and(|a| a != alg) {
        return Err(TokenError::KeyMismatch);
    }
    let validation = rules
        .validations
        .iter()
        .find(|(a, _)| *a == alg)
        .map(|(_, v)| v)
        .ok_or(TokenError::Algorithm(format!("{alg:?}")))?;
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token, &key.key, validation,
    )
    .map_err(|e| map_error(e.kind()))?;
    Ok(Claims(data.claims))
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            TokenError::Signature
        }
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidIssuer => TokenError::Issuer,
        K::InvalidAudience => TokenError::Audience,
        K::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => TokenError::Issuer,
            "aud" => TokenError::Audience,
            other => TokenError::MissingClaim(other.to_string()),
        },
        K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::KeyMismatch,
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
