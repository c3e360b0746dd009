//! Checks for the `secrets` pack: the providers' own checksums where a format has one (GitHub
//! and npm: a CRC32 of the random part, base62-encoded, in the last 6 characters), structure
//! that a format implies (a Discord bot token starts with a base64 user id; an Azure SAS
//! signature is a base64 HMAC-SHA256), and an entropy floor that tells a random token from a
//! placeholder (`glpat-xxxxxxxxxxxxxxxxxxxx`, `password = "changeme"`).
//!
//! Like every validator these look at the match and at most
//! [`LOOK_BEHIND`](super::validate::LOOK_BEHIND) bytes before it, never after.

use super::validate::{yes, Check};

/// CRC-32 (IEEE 802.3, as zlib computes it), a byte at a time from a table built at compile
/// time: on text dense with tokens the bitwise loop was 4 % of the scan.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg());
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `v` in base62 (digits, then upper, then lower case), left-padded with `0` to 6 characters:
/// the checksum part of GitHub's and npm's tokens.
pub fn base62_6(mut v: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    out
}

/// Whether `body` (the token after its prefix) ends with the base62 CRC32 of the rest.
pub fn crc32_base62_ok(body: &[u8]) -> bool {
    body.len() > 6 && {
        let (random, sum) = body.split_at(body.len() - 6);
        base62_6(crc32(random)) == sum
    }
}

/// Shannon entropy of a byte string, in bits per byte.
pub(crate) fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Substrings that mark a value as a placeholder or an example rather than a secret.
const PLACEHOLDERS: &[&[u8]] = &[
    b"xxxx",
    b"XXXX",
    b"****",
    b"....",
    b"0000",
    b"1234",
    b"abcd",
    b"ABCD",
    b"your",
    b"YOUR",
    b"example",
    b"EXAMPLE",
    b"placeholder",
    b"PLACEHOLDER",
    b"changeme",
    b"dummy",
    b"redacted",
    b"REDACTED",
    b"secret",
    b"SECRET",
    b"password",
    b"PASSWORD",
    b"token",
    b"TOKEN",
];

/// A random-looking token body: an entropy floor (a third below what random base62 of that
/// length shows), no placeholder fragment, and a digit or both letter cases.
pub(crate) fn looks_random(body: &[u8]) -> bool {
    let n = body.len();
    if n < 8 {
        return false;
    }
    let floor = ((n as f64).log2() * 0.72).min(3.0);
    let upper = body.iter().any(u8::is_ascii_uppercase);
    let lower = body.iter().any(u8::is_ascii_lowercase);
    let digit = body.iter().any(u8::is_ascii_digit);
    entropy(body) >= floor
        && (digit || (upper && lower))
        && !PLACEHOLDERS
            .iter()
            .any(|p| body.windows(p.len()).any(|w| w == *p))
}

/// The part of a match after its last prefix separator among the first `max` bytes.
fn after_prefix(m: &[u8], max: usize) -> &[u8] {
    let p = m[..m.len().min(max)]
        .iter()
        .rposition(|&b| matches!(b, b'_' | b'-' | b'.' | b'=' | b':'));
    p.map_or(m, |p| &m[p + 1..])
}

/// Tokens with a fixed prefix and a random body (GitLab, Vault, Doppler, Shopify …).
pub(crate) fn random(h: &[u8], s: usize, e: usize) -> Check {
    yes(looks_random(after_prefix(&h[s..e], 12)))
}

/// GitHub: the classic kinds (`ghp_ gho_ ghu_ ghs_ ghr_`) carry a CRC32 of their 30 random
/// characters in the last 6; fine-grained tokens (`github_pat_`) must look random.
pub(crate) fn github(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    match m.strip_prefix(b"github_pat_") {
        Some(body) => yes(looks_random(body)),
        None => yes(crc32_base62_ok(&m[4..])),
    }
}

/// npm access tokens: `npm_` + 30 random + their base62 CRC32, as GitHub's.
pub(crate) fn npm(h: &[u8], s: usize, e: usize) -> Check {
    yes(crc32_base62_ok(&h[s + 4..e]))
}

/// OpenAI keys are random base62 (with `-`/`_` in project keys): both letter cases and
/// digits. `sk-learn-compatible-estimators` is not a key.
pub(crate) fn openai(h: &[u8], s: usize, e: usize) -> Check {
    let b = &h[s + 3..e];
    let upper = b.iter().any(u8::is_ascii_uppercase);
    let lower = b.iter().any(u8::is_ascii_lowercase);
    let digits = b.iter().filter(|b| b.is_ascii_digit()).count();
    yes(upper && lower && digits >= 2)
}

/// Hugging Face tokens: random with both letter cases.
pub(crate) fn mixed_case(h: &[u8], s: usize, e: usize) -> Check {
    let body = after_prefix(&h[s..e], 8);
    let upper = body.iter().any(u8::is_ascii_uppercase);
    let lower = body.iter().any(u8::is_ascii_lowercase);
    yes(upper && lower && looks_random(body))
}

/// Stripe keys: random base62, in either case mix (restricted keys can be all lower case), with
/// digits.
pub(crate) fn stripe(h: &[u8], s: usize, e: usize) -> Check {
    let body = after_prefix(&h[s..e], 9);
    yes(body.iter().any(u8::is_ascii_digit) && looks_random(body))
}

/// A PEM or OpenSSH private key block: a body of at least 64 base64 characters (a real key
/// has hundreds; `-----BEGIN PRIVATE KEY-----\n...\n-----END` in docs has none).
pub(crate) fn pem_block(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let body_start = m[10..]
        .windows(5)
        .position(|w| w == b"-----")
        .map_or(m.len(), |p| 10 + p + 5);
    let body = &m[body_start.min(m.len())..];
    let body = body
        .windows(8)
        .position(|w| w == b"-----END")
        .map_or(body, |p| &body[..p]);
    let b64 = body
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
        .count();
    // `\n` escapes count their `n`; a real body outweighs them many times over.
    yes(b64 >= 64 && looks_random(body))
}

/// The value of a 4-bit base64 digit, `None` for other bytes.
fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Decodes unpadded base64 (either alphabet) into `out`; `None` on a byte outside it.
fn b64_decode<'a>(s: &[u8], out: &'a mut [u8; 32]) -> Option<&'a [u8]> {
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for &c in s {
        acc = (acc << 6) | b64_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    Some(&out[..n])
}

/// Discord bot tokens: the first part is the bot's user id (a 17–20 digit snowflake) in
/// base64.
pub(crate) fn discord(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let id = m.split(|&b| b == b'.').next().unwrap_or_default();
    let mut buf = [0u8; 32];
    yes(b64_decode(id, &mut buf)
        .is_some_and(|d| (17..=20).contains(&d.len()) && d.iter().all(u8::is_ascii_digit)))
}

/// Azure SAS signatures: `sig=` in a query string, a base64 HMAC-SHA256 (43 characters and
/// `=`, URL-encoded or not).
pub(crate) fn azure_sas(h: &[u8], s: usize, e: usize) -> Check {
    if s == 0 || !matches!(h[s - 1], b'?' | b'&' | b'"' | b'\'' | b' ') {
        return Check::Reject;
    }
    let v = &h[s + 4..e];
    let mut decoded = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' if v.len() >= i + 3 => {
                let hex = std::str::from_utf8(&v[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => decoded.push(b),
                    Err(_) => return Check::Reject,
                }
                i += 3;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    yes(decoded.len() == 44 && decoded[43] == b'=' && looks_random(&decoded[..43]))
}

/// Passwords that mark a URL as an example or a local default, not a leak.
const URL_PLACEHOLDERS: &[&[u8]] = &[
    b"password",
    b"pass",
    b"passwd",
    b"pwd",
    b"secret",
    b"changeme",
    b"xxx",
    b"***",
    b"...",
    b"postgres",
    b"root",
    b"admin",
    b"guest",
    b"test",
    b"user",
    b"example",
    b"foo",
    b"bar",
    b"baz",
    b"qux",
    b"hunter2",
];

/// The URL schemes of databases and message queues.
const DATABASE_SCHEMES: &[&[u8]] = &[
    b"postgres",
    b"postgresql",
    b"mysql",
    b"mariadb",
    b"mongodb",
    b"mongodb+srv",
    b"redis",
    b"rediss",
    b"amqp",
    b"amqps",
    b"mssql",
    b"sqlserver",
    b"clickhouse",
    b"cockroachdb",
];

/// Database and message-queue URLs with a password (the match is `://user:password@`; the
/// scheme is read behind it): not a placeholder, not a template (`${DB_PASSWORD}`,
/// `<password>`, `{{ pw }}`, `%s`), not the user name again (`postgres:postgres@localhost`, a
/// container's default).
pub(crate) fn database_url(h: &[u8], s: usize, e: usize) -> Check {
    let lo = s.saturating_sub(12);
    let scheme_start = h[lo..s]
        .iter()
        .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'+'))
        .map_or(lo, |p| lo + p + 1);
    let scheme = &h[scheme_start..s];
    let word_start = scheme_start == 0 || !h[scheme_start - 1].is_ascii_alphanumeric();
    if !word_start
        || !DATABASE_SCHEMES
            .iter()
            .any(|d| d.eq_ignore_ascii_case(scheme))
    {
        return Check::Poison;
    }
    let auth = &h[s + 3..e];
    let auth = &auth[..auth.len().saturating_sub(1)];
    let Some(colon) = auth.iter().position(|&b| b == b':') else {
        return Check::Reject;
    };
    let (user, pass) = (&auth[..colon], &auth[colon + 1..]);
    let templated = pass
        .iter()
        .any(|b| matches!(b, b'$' | b'<' | b'>' | b'{' | b'}' | b'%' | b'[' | b']'));
    let placeholder = URL_PLACEHOLDERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(pass))
        || pass.iter().all(|&b| b == pass[0]);
    yes(!templated && !placeholder && pass != user && pass.len() >= 4)
}

/// What may stand in front of a value that is code, not a literal: a variable, an
/// environment look-up, a type.
const CODE_VALUES: &[&[u8]] = &[
    b"env",
    b"ENV",
    b"os.",
    b"process.",
    b"self.",
    b"this.",
    b"config",
    b"settings",
    b"args",
    b"None",
    b"null",
    b"true",
    b"false",
    b"String",
    b"Option",
    b"str",
    b"Vec",
    b"Box",
];

/// `password = "…"`, `secret: …`, `API_KEY=…`: the value must be a literal (not a variable,
/// a path, a type, an environment look-up or a template) and random-looking (see
/// [`looks_random`]). The longest match holds the whole value, so every verdict but a finding
/// poisons: a shorter piece of a rejected value is no secret either.
pub(crate) fn assignment(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let Some(op) = m.iter().position(|&b| b == b'=' || b == b':') else {
        return Check::Poison;
    };
    let rest = &m[op..];
    if rest.starts_with(b"::") {
        return Check::Poison;
    }
    let start = rest
        .iter()
        .position(|b| !matches!(b, b'=' | b':' | b'>' | b' ' | b'\t' | b'"' | b'\''))
        .unwrap_or(rest.len());
    let v = &rest[start..];
    let quoted = rest[..start].iter().any(|&b| b == b'"' || b == b'\'');
    let code = CODE_VALUES.iter().any(|c| v.starts_with(c))
        || v.windows(2).any(|w| w == b"::" || w == b"->")
        || v.iter().any(|b| {
            matches!(
                b,
                b'$' | b'<' | b'>' | b'{' | b'}' | b'(' | b')' | b'[' | b'%' | b'&' | b'*'
            )
        });
    // An unquoted name (`password = pw_hash`, `SECRET: _bindgen_ty_3`, `key = HpkeKey`) is a
    // variable or a type unless it mixes both letter cases and digits.
    let name = v
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'));
    let mixed = v.iter().any(u8::is_ascii_uppercase)
        && v.iter().any(u8::is_ascii_lowercase)
        && v.iter().any(u8::is_ascii_digit);
    let variable = !quoted && name && (v.contains(&b'_') || v.contains(&b'.') || !mixed);
    if code || variable || v.len() < 10 {
        return Check::Poison;
    }
    if looks_random(v) && entropy(v) >= 3.0 {
        Check::Accept
    } else {
        Check::Poison
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn base62_pads_to_six() {
        assert_eq!(&base62_6(0), b"000000");
        assert_eq!(&base62_6(61), b"00000z");
        assert_eq!(&base62_6(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn entropy_floor_tells_random_from_placeholders() {
        assert!(looks_random(b"q8Zr2LmX0pVt7WcY4nBd"));
        assert!(!looks_random(b"xxxxxxxxxxxxxxxxxxxx"));
        assert!(!looks_random(b"your-token-goes-here"));
        assert!(!looks_random(b"aaaaaaaaaaaaaaaaaaaa"));
    }
}
