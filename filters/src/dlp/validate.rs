//! Checks that turn a pattern match into a finding: checksums (Luhn, IBAN mod-97), the SSN
//! numbering rules, and plausibility tests for token-shaped secrets.
//!
//! A validator sees the whole scanned text and the candidate's span. It may look *behind* the
//! span (at most [`LOOK_BEHIND`] bytes) but never after its end: in a stream the bytes after a
//! candidate may not have arrived yet, and a decision must not depend on them. Anything a
//! validator needs to know about what follows is put in the pattern instead (see `ipv4`).

/// How far before a candidate a validator may look.
pub(crate) const LOOK_BEHIND: usize = 8;

/// A validator's verdict on one candidate span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// A finding.
    Accept,
    /// Not a finding; a shorter span at the same start may still be one.
    Reject,
    /// Not a finding, and no shorter span at the same start is one either (the candidate is
    /// part of something longer that is not sensitive, e.g. a five-part dotted number).
    Poison,
}

pub(crate) type Validator = fn(&[u8], usize, usize) -> Check;

fn yes(ok: bool) -> Check {
    if ok {
        Check::Accept
    } else {
        Check::Reject
    }
}

/// The Luhn checksum over a sequence of decimal digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The decimal digits of `m`, when there are at most `N` of them.
fn digits_of<const N: usize>(m: &[u8]) -> Option<([u8; N], usize)> {
    let mut d = [0u8; N];
    let mut n = 0;
    for &b in m.iter().filter(|b| b.is_ascii_digit()) {
        *d.get_mut(n)? = b;
        n += 1;
    }
    Some((d, n))
}

fn starts_in(d: &[u8], lo: u32, hi: u32, width: usize) -> bool {
    if d.len() < width {
        return false;
    }
    let v = d[..width]
        .iter()
        .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'));
    (lo..=hi).contains(&v)
}

/// Issuer identification numbers of the card networks: a Luhn-valid number with an unknown
/// prefix (an order id, a timestamp) is not a card.
fn known_issuer(d: &[u8]) -> bool {
    let n = d.len();
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19), // Visa
        b'5' => {
            starts_in(d, 51, 55, 2) && n == 16                // Mastercard
            || starts_in(d, 50, 50, 2) || starts_in(d, 56, 58, 2)
        } // Maestro
        b'2' => starts_in(d, 2221, 2720, 4) && n == 16, // Mastercard 2-series
        b'3' => {
            (starts_in(d, 34, 34, 2) || starts_in(d, 37, 37, 2)) && n == 15 // Amex
                || starts_in(d, 3528, 3589, 4)                               // JCB
                || starts_in(d, 300, 305, 3) || starts_in(d, 36, 36, 2)      // Diners
                || starts_in(d, 38, 39, 2)
        }
        b'6' => true, // Discover, UnionPay, Maestro, RuPay, Troy…
        _ => false,
    }
}

/// Payment card numbers: 13–19 digits, one kind of separator in plausible groups, a known
/// issuer prefix and a valid Luhn checksum.
pub(crate) fn card(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let Some((buf, n)) = digits_of::<19>(m) else {
        return Check::Reject;
    };
    let d = &buf[..n];
    if !(13..=19).contains(&n) || d.iter().all(|&x| x == d[0]) {
        return Check::Reject;
    }
    // Group lengths between separators, which must all be the same byte.
    let mut sep = None;
    let mut groups = [0u8; 19];
    let mut g = 0;
    for &b in m {
        if b.is_ascii_digit() {
            groups[g] += 1;
        } else {
            if sep.is_some_and(|s| s != b) {
                return Check::Reject;
            }
            sep = Some(b);
            g += 1;
        }
    }
    if sep.is_some() {
        let groups = &groups[..=g];
        let (last, init) = groups.split_last().unwrap_or((&0, &[]));
        let fours = groups.len() >= 3 && init.iter().all(|&x| x == 4) && (1..=4).contains(last);
        let amex_diners = groups.len() == 3 && groups[0] == 4 && groups[1] == 6 && groups[2] >= 4;
        if !(fours || amex_diners) {
            return Check::Reject;
        }
    }
    yes(known_issuer(d) && luhn(d))
}

/// US Social Security numbers: area 001–899 except 666, group 01–99, serial 0001–9999.
pub(crate) fn ssn(h: &[u8], s: usize, e: usize) -> Check {
    let Some((d, 9)) = digits_of::<9>(&h[s..e]) else {
        return Check::Reject;
    };
    let num = |r: std::ops::Range<usize>| {
        d[r].iter()
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'))
    };
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    yes(area != 0 && area != 666 && area < 900 && group != 0 && serial != 0)
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

/// ISO 7064 mod 97-10 over an IBAN with its first four characters moved to the end.
pub fn iban_checksum(compact: &[u8]) -> bool {
    if compact.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// IBANs: a registered country, that country's length, and the mod-97 check digits.
pub(crate) fn iban(h: &[u8], s: usize, e: usize) -> Check {
    let mut buf = [0u8; 34];
    let mut n = 0;
    for &b in h[s..e].iter().filter(|&&b| b != b' ') {
        match buf.get_mut(n) {
            Some(slot) => *slot = b,
            None => return Check::Reject,
        }
        n += 1;
    }
    let compact = &buf[..n];
    let cc = [compact[0], compact[1]];
    let ok = IBAN_LENGTHS
        .iter()
        .any(|(c, len)| **c == cc && *len == compact.len())
        && iban_checksum(compact);
    yes(ok)
}

/// Phone numbers: balanced parentheses and a plausible digit count (10 or 11 for the North
/// American form, 8–15 for the international one, per E.164).
pub(crate) fn phone(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let opens = m.iter().filter(|&&b| b == b'(').count();
    let closes = m.iter().filter(|&&b| b == b')').count();
    if opens != closes || opens > 1 {
        return Check::Reject;
    }
    let n = m.iter().filter(|b| b.is_ascii_digit()).count();
    if m[0] == b'+' {
        yes((8..=15).contains(&n))
    } else {
        yes(n == 10)
    }
}

/// IPv4 addresses. The pattern lets a fifth `.N` component follow, so that `1.2.3.4.5` (an
/// OID, a four-part version) is seen whole and poisoned here rather than half-matched.
pub(crate) fn ipv4(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    if m.iter().filter(|&&b| b == b'.').count() != 3 {
        return Check::Poison;
    }
    // Inside a longer dotted number (`5.1.2.3.4`).
    if s >= 2 && h[s - 1] == b'.' && h[s - 2].is_ascii_digit() {
        return Check::Poison;
    }
    // 0.0.0.0/8 (this host, "any") and 127.0.0.0/8 (loopback) say nothing about anyone.
    yes(!(m.starts_with(b"0.") || m.starts_with(b"127.")))
}

/// File extensions that look like top-level domains in `icon@2x.png`-style names.
const NOT_TLDS: &[&[u8]] = &[
    b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"bmp", b"ico", b"css", b"js", b"ts", b"mjs",
    b"tsx", b"jsx", b"json", b"yaml", b"yml", b"toml", b"lock", b"md", b"txt", b"py", b"rs", b"go",
    b"rb", b"java", b"kt", b"swift", b"php", b"html", b"htm", b"xml", b"zip", b"gz", b"tar",
    b"map", b"wasm", b"pdf", b"mp4", b"mp3", b"woff", b"woff2", b"ttf",
];

/// E-mail addresses: no empty or dotted-out local part, domain labels that do not start or
/// end with `-`, and a top-level domain that is not a file extension.
pub(crate) fn email(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let Some(at) = m.iter().position(|&b| b == b'@') else {
        return Check::Reject;
    };
    let (local, domain) = (&m[..at], &m[at + 1..]);
    if local.is_empty() || local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
        return Check::Reject;
    }
    if domain
        .split(|&b| b == b'.')
        .any(|l| l.is_empty() || l.starts_with(b"-") || l.ends_with(b"-"))
    {
        return Check::Reject;
    }
    let tld = domain.rsplit(|&b| b == b'.').next().unwrap_or_default();
    yes(!NOT_TLDS.iter().any(|t| t.eq_ignore_ascii_case(tld)))
}

fn classes(m: &[u8]) -> (bool, bool, usize) {
    let upper = m.iter().any(u8::is_ascii_uppercase);
    let lower = m.iter().any(u8::is_ascii_lowercase);
    let digits = m.iter().filter(|b| b.is_ascii_digit()).count();
    (upper, lower, digits)
}

/// OpenAI keys are random base62 (with `-`/`_` in project keys): both letter cases and
/// digits. `sk-learn-compatible-estimators` is not a key.
pub(crate) fn openai(h: &[u8], s: usize, e: usize) -> Check {
    let (upper, lower, digits) = classes(&h[s + 3..e]);
    yes(upper && lower && digits >= 2)
}

/// Random alphanumeric tokens (Stripe, Hugging Face): both letter cases.
pub(crate) fn mixed_case(h: &[u8], s: usize, e: usize) -> Check {
    let body = match h[s..e].iter().position(|&b| b == b'_') {
        Some(p) => &h[s + p + 1..e],
        None => &h[s..e],
    };
    let (upper, lower, _) = classes(body);
    yes(upper && lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_numbers() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111111111111112"));
    }

    #[test]
    fn iban_known_numbers() {
        assert!(iban_checksum(b"DE89370400440532013000"));
        assert!(iban_checksum(b"GB82WEST12345698765432"));
        assert!(!iban_checksum(b"DE89370400440532013001"));
    }
}
