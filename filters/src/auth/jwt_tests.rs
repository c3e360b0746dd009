//! Every check of [`super::verify`], with keys generated here (ring) and tokens signed by
//! `jsonwebtoken`. The same checks run end to end against a real provider in
//! `tests/python/test_identity.py`.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{encode, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

const ISS: &str = "https://idp.example.com/realms/acme";

struct Signer {
    kid: String,
    key: EncodingKey,
    public_x: String,
}

fn signer(kid: &str) -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ed25519 key");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse key");
    Signer {
        kid: kid.into(),
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        public_x: B64.encode(pair.public_key().as_ref()),
    }
}

fn jwks(signers: &[&Signer]) -> ProviderKeys {
    let keys: Vec<_> = signers
        .iter()
        .map(|s| json!({"kty": "OKP", "crv": "Ed25519", "x": s.public_x, "kid": s.kid, "use": "sig"}))
        .collect();
    ProviderKeys::from_jwks(json!({ "keys": keys }).to_string().as_bytes()).expect("jwks")
}

fn now() -> i64 {
    crate::clock::unix_secs() as i64
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "aud": "sluice", "sub": "u1", "email": "ann@example.com",
           "groups": ["eng"], "exp": now() + 300, "iat": now()})
}

fn sign(s: &Signer, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(s.kid.clone());
    encode(&h, claims, &s.key).expect("sign")
}

fn rules() -> TokenRules {
    TokenRules::new(ISS, &["sluice".to_string(), "other".to_string()])
}

/// A token with a hand-made header and payload and the given signature bytes.
fn forged(header: serde_json::Value, payload: &serde_json::Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string()),
        B64.encode(sig)
    )
}

#[test]
fn a_good_token_verifies_and_its_claims_are_read() {
    let s = signer("k1");
    let c = verify(&sign(&s, &claims()), &jwks(&[&s]), &rules()).expect("valid");
    assert_eq!(c.string("email"), Some("ann@example.com"));
    assert_eq!(c.strings("groups"), vec!["eng"]);
}

#[test]
fn issuer_audience_and_times_are_checked_with_sixty_seconds_of_skew() {
    let s = signer("k1");
    let keys = jwks(&[&s]);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims();
        c[k] = v;
        verify(&sign(&s, &c), &keys, &rules())
    };
    assert_eq!(
        with("iss", json!("https://evil.example.com")).unwrap_err(),
        TokenError::Issuer
    );
    assert_eq!(
        with("iss", json!(format!("{ISS}/"))).unwrap_err(),
        TokenError::Issuer
    );
    assert_eq!(
        with("aud", json!("nope")).unwrap_err(),
        TokenError::Audience
    );
    assert!(with("aud", json!(["nope", "other"])).is_ok());
    assert_eq!(
        with("exp", json!(now() - 120)).unwrap_err(),
        TokenError::Expired
    );
    assert!(with("exp", json!(now() - 30)).is_ok(), "within the skew");
    assert_eq!(
        with("nbf", json!(now() + 120)).unwrap_err(),
        TokenError::NotYetValid
    );
    assert!(with("nbf", json!(now() + 30)).is_ok(), "within the skew");
    let mut no_exp = claims();
    no_exp.as_object_mut().map(|o| o.remove("exp"));
    assert!(matches!(
        verify(&sign(&s, &no_exp), &keys, &rules()),
        Err(TokenError::MissingClaim(_))
    ));
}

#[test]
fn none_and_hmac_are_refused_even_with_the_public_key_as_secret() {
    let s = signer("k1");
    let keys = jwks(&[&s]);
    let none = forged(json!({"alg": "none", "kid": "k1"}), &claims(), b"");
    assert_eq!(
        verify(&none, &keys, &rules()).unwrap_err(),
        TokenError::Algorithm("none".into())
    );
    // The classic confusion attack: HMAC keyed with the provider's public key material.
    let secret = EncodingKey::from_secret(s.public_x.as_bytes());
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = encode(&h, &claims(), &secret).expect("hs256");
    let err = verify(&hs, &keys, &rules()).unwrap_err();
    assert_eq!(err, TokenError::Algorithm("HS256".into()));
    assert!(err.message().contains("HS256"));
    assert!(!err.message().contains(&hs));
}

#[test]
fn signature_kid_and_key_type_are_checked() {
    let s = signer("k1");
    let other = signer("k2");
    let keys = jwks(&[&s]);
    let good = sign(&s, &claims());
    // Tampered payload, original signature.
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut c = claims();
    c["groups"] = json!(["admins"]);
    let payload = B64.encode(c.to_string());
    parts[1] = &payload;
    assert_eq!(
        verify(&parts.join("."), &keys, &rules()).unwrap_err(),
        TokenError::Signature
    );
    // Unknown kid; a known kid with another key's signature.
    assert_eq!(
        verify(&sign(&other, &claims()), &keys, &rules()).unwrap_err(),
        TokenError::UnknownKey
    );
    let imposter = Signer {
        kid: "k1".into(),
        ..signer("x")
    };
    assert_eq!(
        verify(&sign(&imposter, &claims()), &keys, &rules()).unwrap_err(),
        TokenError::Signature
    );
    // An RSA alg naming an Ed25519 key.
    let rs = forged(json!({"alg": "RS256", "kid": "k1"}), &claims(), b"sig");
    assert_eq!(
        verify(&rs, &keys, &rules()).unwrap_err(),
        TokenError::KeyMismatch
    );
    assert_eq!(
        verify("not.a-token", &keys, &rules()).unwrap_err(),
        TokenError::Malformed
    );
}

#[test]
fn symmetric_keys_are_never_loaded() {
    let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}).to_string();
    assert!(ProviderKeys::from_jwks(oct.as_bytes()).is_err());
    assert!(looks_like_jwt(b"eyJ.eyJ.sig"));
    assert!(!looks_like_jwt(b"sk-sluice-abc"));
}

#[test]
fn a_verified_token_is_reused_until_it_expires_or_the_keys_change() {
    use crate::auth::verified::VerifiedTokens;
    use std::sync::Arc;
    let s = signer("k1");
    let keys = Arc::new(jwks(&[&s]));
    let cache = VerifiedTokens::default();
    let token = sign(&s, &claims());
    assert!(
        cache.get(&token, &keys).is_none(),
        "nothing is kept before a verification"
    );
    let verified = verify(&token, &keys, &rules()).expect("a good token");
    cache.put(&token, &keys, &verified);
    let again = cache.get(&token, &keys).expect("kept");
    assert_eq!(again.string("sub"), verified.string("sub"));
    // Another token, even with the same claims, is not this one.
    let mut other = claims();
    other["jti"] = json!("another");
    assert!(cache.get(&sign(&s, &other), &keys).is_none());
    // Keys loaded again (rotation, the scheduled refresh): verified afresh.
    let reloaded = Arc::new(jwks(&[&s]));
    assert!(cache.get(&token, &reloaded).is_none());
    // Expired past the leeway: dropped, as the full check would refuse it.
    let mut old = claims();
    old["exp"] = json!(now() - LEEWAY_SECONDS as i64 - 5);
    let stale = sign(&s, &old);
    let mut ok_then = claims();
    ok_then["exp"] = json!(now() + 3600);
    let fresh = verify(&sign(&s, &ok_then), &keys, &rules()).expect("good");
    // A cached entry whose `exp` has passed (its claims say so) is refused on use.
    let expired = verify(&stale, &keys, &rules());
    assert!(expired.is_err(), "the full check refuses it");
    cache.put(
        &stale,
        &keys,
        &fresh_with_exp(&fresh, now() - LEEWAY_SECONDS as i64 - 5),
    );
    assert!(cache.get(&stale, &keys).is_none());
}

/// `claims` with another `exp` (the cache reads `exp` from the claims it keeps).
fn fresh_with_exp(c: &Claims, exp: i64) -> Claims {
    let mut m = c.0.clone();
    m.insert("exp".into(), json!(exp));
    Claims(m)
}
