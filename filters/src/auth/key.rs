//! API key material: generating keys, hashing them, and reading them from a request.
//!
//! The gateway never holds a key in its config, only the key's SHA-256. A key presented by a
//! client lives for the duration of one request, as a borrowed slice of the request's headers;
//! it is hashed and dropped, never copied into a `String`, a log line or an error message.

use std::fmt;
use std::hash::{Hash, Hasher};

use http::HeaderMap;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest as _, Sha256};

/// What every key `sluice keys new` prints starts with, so that DLP rules and secret scanners
/// can recognise a leaked Sluice key.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// How many random base62 characters follow [`KEY_PREFIX`]: 40 × log2(62) ≈ 238 bits.
pub const KEY_RANDOM_CHARS: usize = 40;

/// The longest key the filter hashes. Keys are not required to be Sluice's own format (an
/// operator may import the hash of an existing key), but nothing legitimate is longer than this,
/// and refusing earlier keeps a hostile client from making us hash large inputs.
pub const MAX_KEY_LEN: usize = 256;

/// The longest `Authorization` value worth parsing: the scheme, some whitespace and a key of
/// [`MAX_KEY_LEN`].
/// (Or a provider token of at most [`super::jwt::MAX_TOKEN_LEN`].)
const MAX_AUTHORIZATION_LEN: usize = super::jwt::MAX_TOKEN_LEN + 32;

/// A fresh API key: [`KEY_PREFIX`] followed by [`KEY_RANDOM_CHARS`] base62 characters drawn
/// uniformly from the operating system's CSPRNG.
///
/// # Panics
///
/// When the operating system cannot provide random bytes. This is only called by the
/// `sluice keys new` command, never on a request path, and there is no safe fallback: a key
/// must not be generated from a weaker source.
pub fn generate_key() -> String {
    // `Alphanumeric` is exactly the 62 characters [0-9A-Za-z], sampled by rejection, so every
    // character is uniform (no modulo bias).
    let random: String = OsRng
        .sample_iter(&Alphanumeric)
        .take(KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

/// The lowercase hex SHA-256 of `key`, as `[[keys]].sha256` holds it.
pub fn key_sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The `[[keys]]` entry for `key`, ready to paste into the config. It holds the key's id, its
/// user and its SHA-256, never the key itself.
pub fn key_entry_toml(id: &str, user: &str, key: &str) -> String {
    // Quoting through the TOML encoder escapes ids and user names that contain quotes or
    // backslashes, so the printed entry always parses back to the same strings.
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "[[keys]]\nid = {}\nuser = {}\nsha256 = \"{}\"\n",
        quote(id),
        quote(user),
        key_sha256_hex(key)
    )
}

/// The SHA-256 of a key, as the filter indexes keys.
///
/// Its equality is constant-time, so that the hash table's own comparison of a presented digest
/// with a stored one does not reveal how many leading bytes they share. Its `Debug` shows
/// nothing: a digest of a low-entropy key (an operator may import one) would allow an offline
/// guess, so it has no business in logs either.
#[derive(Clone, Copy)]
pub(crate) struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub(crate) fn of(key: &[u8]) -> KeyDigest {
        KeyDigest(Sha256::digest(key).into())
    }

    /// A digest as [`crate::policy::Policy::check`] decoded it.
    pub(crate) fn from_bytes(digest: [u8; 32]) -> KeyDigest {
        KeyDigest(digest)
    }

    /// Decodes `[[keys]].sha256` (64 hex digits, either case).
    pub(crate) fn from_hex(hex_digest: &str) -> Option<KeyDigest> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut out).ok()?;
        Some(KeyDigest(out))
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        // Accumulate every byte's difference instead of returning at the first mismatch;
        // `black_box` keeps the optimiser from turning the loop back into an early exit.
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for KeyDigest {}

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// What a request's `Authorization` header holds, as far as the auth filter is concerned.
#[derive(PartialEq, Eq)]
pub(crate) enum Presented<'a> {
    /// No credential at all: no header, an empty one, or `Bearer` without a key.
    Missing,
    /// Something that cannot be one of our keys: another scheme, several `Authorization`
    /// headers, an oversized value, or characters no key contains.
    Malformed(&'static str),
    /// A candidate key (printable ASCII, at most [`MAX_KEY_LEN`] bytes), still to be looked up.
    Key(&'a [u8]),
}

// Never prints the key: `Presented` values end up in test failure messages.
impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Missing => f.write_str("Missing"),
            Presented::Malformed(why) => write!(f, "Malformed({why})"),
            Presented::Key(k) => write!(f, "Key(<{} bytes>)", k.len()),
        }
    }
}

/// Reads the caller's key: `Authorization: Bearer <key>` (what every OpenAI SDK sends), and,
/// when `x_api_key` (Anthropic's routes and clients), `x-api-key: <key>` as Anthropic's SDKs
/// and Claude Code send it. Two different credentials are refused: picking one would let a
/// proxy in front of us and this filter disagree on who is calling. Nowhere else (a query
/// string) is accepted: that would widen where keys travel and get logged.
pub(crate) fn parse_credentials(headers: &HeaderMap, x_api_key: bool) -> Presented<'_> {
    let bearer = parse_authorization(headers);
    if !x_api_key || !headers.contains_key(X_API_KEY) {
        return bearer;
    }
    let api_key = parse_api_key(headers);
    match (bearer, api_key) {
        (Presented::Missing, k) | (k, Presented::Missing) => k,
        (Presented::Key(a), Presented::Key(b)) if a == b => Presented::Key(a),
        (Presented::Malformed(why), _) | (_, Presented::Malformed(why)) => {
            Presented::Malformed(why)
        }
        _ => Presented::Malformed("two different credentials"),
    }
}

const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
/// Sent by every Anthropic client: such a client may present its key as `x-api-key`.
pub(crate) const ANTHROPIC_VERSION: http::HeaderName =
    http::HeaderName::from_static("anthropic-version");

/// Reads `x-api-key: <key>`.
fn parse_api_key(headers: &HeaderMap) -> Presented<'_> {
    let mut values = headers.get_all(X_API_KEY).iter();
    let Some(value) = values.next() else {
        return Presented::Missing;
    };
    if values.next().is_some() {
        return Presented::Malformed("several x-api-key headers");
    }
    let key = trim_ows(value.as_bytes());
    checked_key(key)
}

/// Reads `Authorization: Bearer <key>` (scheme case-insensitive, as RFC 9110 says).
fn parse_authorization(headers: &HeaderMap) -> Presented<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::Missing;
    };
    if values.next().is_some() {
        // Two credentials: picking one would let a proxy in front of us and this filter
        // disagree on who is calling.
        return Presented::Malformed("several Authorization headers");
    }
    let raw = value.as_bytes();
    if raw.len() > MAX_AUTHORIZATION_LEN {
        return Presented::Malformed("oversized Authorization header");
    }
    let raw = trim_ows(raw);
    if raw.is_empty() {
        return Presented::Missing;
    }
    let (scheme, rest) = match raw.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => raw.split_at(i),
        None => (raw, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Presented::Malformed("not a Bearer credential");
    }
    checked_key(trim_ows(rest))
}

/// A candidate key, or why it cannot be one.
fn checked_key(key: &[u8]) -> Presented<'_> {
    if key.is_empty() {
        return Presented::Missing;
    }
    if key.len() > MAX_KEY_LEN && !super::jwt::looks_like_jwt(key) {
        return Presented::Malformed("oversized key");
    }
    // Visible ASCII only: no key we issue or accept contains spaces, control characters or
    // non-ASCII bytes, and refusing them here means they are never hashed or compared.
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Presented::Malformed("non-printable characters in key");
    }
    Presented::Key(key)
}

/// Strips HTTP optional whitespace (spaces and tabs) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_bytes(v).expect("test header value"),
            );
        }
        h
    }

    fn parse(values: &[&[u8]]) -> String {
        format!("{:?}", parse_credentials(&headers(values), false))
    }

    #[test]
    fn bearer_is_parsed_case_insensitively_with_optional_whitespace() {
        for v in [
            &b"Bearer sk-abc"[..],
            b"bearer sk-abc",
            b"BEARER sk-abc",
            b"  Bearer \t sk-abc\t ",
        ] {
            let h = headers(&[v]);
            assert!(
                parse_credentials(&h, false) == Presented::Key(b"sk-abc"),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn absent_or_empty_credentials_are_missing() {
        assert_eq!(parse(&[]), "Missing");
        assert_eq!(parse(&[b""]), "Missing");
        assert_eq!(parse(&[b"   "]), "Missing");
        assert_eq!(parse(&[b"Bearer"]), "Missing");
        assert_eq!(parse(&[b"Bearer    "]), "Missing");
    }

    #[test]
    fn anything_else_is_malformed() {
        assert_eq!(
            parse(&[b"Basic dXNlcjpwYXNz"]),
            "Malformed(not a Bearer credential)"
        );
        assert_eq!(parse(&[b"sk-abc"]), "Malformed(not a Bearer credential)");
        assert_eq!(
            parse(&[b"Bearerx sk-abc"]),
            "Malformed(not a Bearer credential)"
        );
        assert_eq!(
            parse(&[b"Bearer sk-a", b"Bearer sk-b"]),
            "Malformed(several Authorization headers)"
        );
        assert_eq!(
            parse(&[b"Bearer sk a"]),
            "Malformed(non-printable characters in key)"
        );
        assert_eq!(
            parse(&[b"Bearer sk-\xe9t\xe9"]),
            "Malformed(non-printable characters in key)"
        );
        let long = format!("Bearer {}", "a".repeat(MAX_KEY_LEN + 1));
        assert_eq!(parse(&[long.as_bytes()]), "Malformed(oversized key)");
        let huge = format!("Bearer {}", "a".repeat(1 << 20));
        assert_eq!(
            parse(&[huge.as_bytes()]),
            "Malformed(oversized Authorization header)"
        );
        let longest = format!("Bearer {}", "a".repeat(MAX_KEY_LEN));
        assert_eq!(parse(&[longest.as_bytes()]), "Key(<256 bytes>)");
    }

    #[test]
    fn digests_compare_by_value_and_hide_in_debug() {
        let a = KeyDigest::of(b"sk-one");
        assert_eq!(a, KeyDigest::of(b"sk-one"));
        assert_ne!(a, KeyDigest::of(b"sk-two"));
        let hex_digest = key_sha256_hex("sk-one");
        assert_eq!(KeyDigest::from_hex(&hex_digest), Some(a));
        assert_eq!(
            KeyDigest::from_hex(&hex_digest.to_ascii_uppercase()),
            Some(a)
        );
        assert_eq!(KeyDigest::from_hex("abc"), None);
        assert_eq!(format!("{a:?}"), "KeyDigest(..)");
    }

    #[test]
    fn sha256_hex_is_the_standard_digest() {
        // FIPS 180-2's test vector for "abc".
        assert_eq!(
            key_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn x_api_key_only_where_allowed_and_never_two_different_keys() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(*n, HeaderValue::from_static(v));
            }
            m
        };
        let only = h(&[("x-api-key", "sk-abc")]);
        assert!(parse_credentials(&only, true) == Presented::Key(b"sk-abc"));
        assert!(parse_credentials(&only, false) == Presented::Missing);
        let same = h(&[("x-api-key", "sk-abc"), ("authorization", "Bearer sk-abc")]);
        assert!(parse_credentials(&same, true) == Presented::Key(b"sk-abc"));
        let two = h(&[("x-api-key", "sk-abc"), ("authorization", "Bearer sk-xyz")]);
        assert_eq!(
            format!("{:?}", parse_credentials(&two, true)),
            "Malformed(two different credentials)"
        );
        let dup = h(&[("x-api-key", "sk-a"), ("x-api-key", "sk-b")]);
        assert_eq!(
            format!("{:?}", parse_credentials(&dup, true)),
            "Malformed(several x-api-key headers)"
        );
    }
}
