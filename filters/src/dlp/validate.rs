//! Checks that turn a pattern match of the `pii` pack into a finding: checksums (Luhn), the
//! SSN numbering rules, and the code context that tells a phone number or a card from a
//! numeric literal (the secrets' checks are in `tokens`, IBANs' in `iban`).
//!
//! A validator sees the whole scanned text and the candidate's span. It may look *behind* the
//! span (at most [`LOOK_BEHIND`] bytes) but never after its end: in a stream the bytes after a
//! candidate may not have arrived yet, and a decision must not depend on them. Anything a
//! validator needs to know about what follows is put in the pattern instead: the digit-led
//! patterns end with an optional *tail* (`.5`, `:12`, `/7`) that only a number which goes on
//! the way no phone or card does can match, and the validator poisons a match that has one
//! (see [`has_tail`]).

use std::sync::LazyLock;

pub(crate) use super::iban::iban;
pub use super::iban::iban_checksum;

/// How far before a candidate a validator may look (the streaming code keeps twice this much
/// context before the text it still has to decide).
pub(crate) const LOOK_BEHIND: usize = 16;

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

pub(crate) fn yes(ok: bool) -> Check {
    if ok {
        Check::Accept
    } else {
        Check::Reject
    }
}

/// The Luhn checksum over a sequence of decimal digits.
pub fn luhn(digits: &[u8]) -> bool {
    // Every second digit from the right, doubled, with the digits of the product summed.
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut sum = 0u32;
    let mut double = false;
    for &d in digits.iter().rev() {
        let v = usize::from(d.wrapping_sub(b'0'));
        sum += if double {
            DOUBLED.get(v).copied().unwrap_or(0)
        } else {
            u32::from(d.wrapping_sub(b'0'))
        };
        double = !double;
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
/// prefix (an order id, a timestamp) is not a card. From the first four of its `n` digits.
fn known_issuer(d: &[u8; 4], n: usize) -> bool {
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

/// Whether a digit-led match starting at `s` continues a number that began before it: the
/// fraction of a decimal (`5.3575…`), an exponent (`1.2345E+12345678`, `e-42`), or the next
/// part of a dotted or colon-separated number.
fn continues_number(h: &[u8], s: usize) -> bool {
    let at = |k: usize| s.checked_sub(k).map(|i| h[i]);
    match (at(1), at(2), at(3)) {
        (Some(b'.' | b':' | b'/'), Some(p), _) => p.is_ascii_digit(),
        (Some(b'+' | b'-'), Some(b'e' | b'E'), Some(p)) => p.is_ascii_digit() || p == b'.',
        (Some(b'e' | b'E'), Some(p), _) => p.is_ascii_digit() || p == b'.',
        _ => false,
    }
}

/// Whether a digit-led match ends with its pattern's tail (`(?:[.:/][0-9A-Za-z])?` after the
/// card, SSN and phone patterns, `ipv4`'s `.N`): the number goes on (a decimal's `.5`, a
/// time's or a `line:column`'s `:12`, a date's `/7`) the way no phone number, card or address
/// does.
fn has_tail(m: &[u8]) -> bool {
    let n = m.len();
    n >= 2 && matches!(m[n - 2], b'.' | b':' | b'/') && m[n - 1].is_ascii_alphanumeric()
}

/// Payment card numbers: 13–19 digits, one kind of separator in plausible groups, a known
/// issuer prefix and a valid Luhn checksum. Written without separators a card has 13–16
/// digits: a bare 17–19-digit number is a 64-bit integer far more often than a card.
pub(crate) fn card(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    if continues_number(h, s) {
        return Check::Poison;
    }
    if has_tail(m) {
        // A bare number that goes on (`5503284107318959.5`) is no card; a grouped one may have
        // run into the next number (`4111 1111 1111 1111 12/27`): try the shorter ends.
        let grouped = m[..m.len() - 2].iter().any(|b| !b.is_ascii_digit());
        return if grouped {
            Check::Reject
        } else {
            Check::Poison
        };
    }
    // Every check from here on rejects, so their order does not matter: the cheapest first.
    // No issuer's numbers start with 0, 1, 7, 8 or 9.
    if !matches!(m.first(), Some(b'2'..=b'6')) {
        return Check::Reject;
    }
    // The issuer, from the number of digits and the first four, before the digits are gathered.
    let n = m.iter().filter(|b| b.is_ascii_digit()).count();
    let mut head = [0u8; 4];
    for (slot, &b) in head.iter_mut().zip(m.iter().filter(|b| b.is_ascii_digit())) {
        *slot = b;
    }
    if !(13..=19).contains(&n) || !known_issuer(&head, n) {
        return Check::Reject;
    }
    // One pass: the digits, and the group lengths between separators, which must all be the
    // same byte.
    let mut buf = [0u8; 19];
    let mut groups = [0u8; 19];
    let (mut n, mut g, mut sep) = (0, 0, None);
    for &b in m {
        if b.is_ascii_digit() {
            let (Some(slot), Some(len)) = (buf.get_mut(n), groups.get_mut(g)) else {
                return Check::Reject;
            };
            *slot = b;
            *len += 1;
            n += 1;
        } else {
            if sep.is_some_and(|s| s != b) {
                return Check::Reject;
            }
            sep = Some(b);
            g += 1;
        }
    }
    let d = &buf[..n];
    if d.iter().all(|&x| x == d[0]) {
        return Check::Reject;
    }
    if sep.is_some() {
        let groups = &groups[..=g];
        let (last, init) = groups.split_last().unwrap_or((&0, &[]));
        let fours = groups.len() >= 3 && init.iter().all(|&x| x == 4) && (1..=4).contains(last);
        let amex_diners = groups.len() == 3 && groups[0] == 4 && groups[1] == 6 && groups[2] >= 4;
        if !(fours || amex_diners) {
            return Check::Reject;
        }
    } else if n > 16 {
        return Check::Reject;
    }
    yes(luhn(d))
}

/// US Social Security numbers: area 001–899 except 666, group 01–99, serial 0001–9999.
pub(crate) fn ssn(h: &[u8], s: usize, e: usize) -> Check {
    if has_tail(&h[s..e]) || continues_number(h, s) {
        return Check::Poison;
    }
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

/// The digit groups of a match (runs of digits between other bytes), at most 8.
fn groups(m: &[u8]) -> ([&[u8]; 8], usize) {
    let mut out: [&[u8]; 8] = [&[]; 8];
    let (mut n, mut i) = (0, 0);
    while i < m.len() && n < out.len() {
        if !m[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < m.len() && m[i].is_ascii_digit() {
            i += 1;
        }
        out[n] = &m[start..i];
        n += 1;
    }
    (out, n)
}

fn value(g: &[u8]) -> u32 {
    g.iter()
        .take(9)
        .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'))
}

/// Whether digit groups read as a date: a year of 4+ digits, then a month and a day
/// (`+262142-12-31`, ISO 8601's expanded years, `+9999-12-31 23`).
fn is_date(gs: &[&[u8]]) -> bool {
    gs.len() >= 2
        && gs[0].len() >= 4
        && gs[1].len() == 2
        && (1..=12).contains(&value(gs[1]))
        && gs
            .get(2)
            .is_none_or(|d| d.len() != 2 || (1..=31).contains(&value(d)))
}

/// Phone numbers: balanced parentheses and a plausible digit count (10 for the North American
/// form; after `+`: 11 for `+1`, 10–15 for other countries, 11–15 written without
/// separators), not a date, not a decimal (a `.` after a run of more than 4 digits), not part
/// of a longer number (an exponent's digits, a `:line`) or of a list of numbers (`384 512 768
/// 1024`).
pub(crate) fn phone(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let at = |k: usize| s.checked_sub(k).map(|i| h[i]);
    let in_list = at(1) == Some(b' ') && at(2).is_some_and(|b| b.is_ascii_digit());
    let glued = at(1).is_some_and(|b| b.is_ascii_digit());
    if has_tail(m)
        || continues_number(h, s)
        || glued
        || (in_list && at(3).is_some_and(|b| b.is_ascii_digit()))
    {
        return Check::Poison;
    }
    // One pass: the parentheses, the digits and their groups, and whether a `.` follows a
    // run of 5 digits.
    let (mut opens, mut closes, mut n, mut ng, mut run) = (0, 0, 0, 0, 0);
    let mut dot_after_long_run = false;
    for &b in m {
        if b.is_ascii_digit() {
            ng += usize::from(run == 0);
            n += 1;
            run += 1;
            continue;
        }
        match b {
            b'(' => opens += 1,
            b')' => closes += 1,
            b'.' => dot_after_long_run |= run >= 5,
            _ => {}
        }
        run = 0;
    }
    if opens != closes || opens > 1 {
        return Check::Reject;
    }
    if m[0] != b'+' {
        return yes(n == 10);
    }
    // A date's year has 4+ digits: the groups are read only after a `+` and 4 digits.
    let date = m.len() > 5 && m[1..5].iter().all(u8::is_ascii_digit) && {
        let (gs, ng) = groups(m);
        is_date(&gs[..ng])
    };
    if date || dot_after_long_run {
        return Check::Poison;
    }
    // Country code 1 is the North American plan's alone: +1, then a 10-digit number.
    let ok = if m.starts_with(b"+1") {
        n == 11
    } else if ng == 1 {
        (11..=15).contains(&n)
    } else {
        (10..=15).contains(&n)
    };
    yes(ok)
}

/// An IPv4 block: its first octet, and the ranges of its second and third.
type Block = (u32, (u32, u32), (u32, u32));

/// IANA's special-purpose and non-unicast IPv4 blocks (RFC 6890 and its updates): addresses in
/// them identify no one on the internet. As `(first octet, second octet range, third octet
/// range)`.
const NOT_PERSONAL: &[Block] = &[
    (0, (0, 255), (0, 255)),     // "this network"
    (10, (0, 255), (0, 255)),    // private (RFC 1918)
    (100, (64, 127), (0, 255)),  // carrier-grade NAT (RFC 6598)
    (127, (0, 255), (0, 255)),   // loopback
    (169, (254, 254), (0, 255)), // link-local
    (172, (16, 31), (0, 255)),   // private
    (192, (0, 0), (0, 0)),       // IETF protocol assignments
    (192, (0, 0), (2, 2)),       // documentation (TEST-NET-1, RFC 5737)
    (192, (88, 88), (99, 99)),   // 6to4 relay anycast
    (192, (168, 168), (0, 255)), // private
    (198, (18, 19), (0, 255)),   // benchmarking (RFC 2544)
    (198, (51, 51), (100, 100)), // documentation (TEST-NET-2)
    (203, (0, 0), (113, 113)),   // documentation (TEST-NET-3)
];

/// Public DNS resolvers: written in every network tutorial, and nobody's address.
const RESOLVERS: &[[u32; 4]] = &[
    [1, 1, 1, 1],
    [1, 0, 0, 1],
    [8, 8, 8, 8],
    [8, 8, 4, 4],
    [9, 9, 9, 9],
    [149, 112, 112, 112],
    [208, 67, 222, 222],
    [208, 67, 220, 220],
];

/// IPv4 addresses that could be someone's: public unicast hosts. The pattern lets a fifth
/// `.N` component or a `-` and a letter follow, so that
/// `1.2.3.4.5` (an OID, a four-part version) and `5.15.153.1-microsoft` (a kernel release) are
/// seen whole and poisoned here rather than half-matched. Not personal: the special-purpose
/// blocks ([`NOT_PERSONAL`]), multicast and reserved (224/3), network and broadcast addresses
/// of a /24 (`.0`, `.255`), the public resolvers, four equal parts (`128.128.128.128`) or parts
/// counting up or down (`20.30.40.50`, `101.102.103.104`), object identifiers (`1.3.101.112`,
/// `2.5.29.35`: 0.04% of the address space), and dotted numbers with three or more one-digit
/// parts (section numbers `8.1.3.6`, versions `7.3.17.1`; an address drawn at random has that
/// shape once in 4,000).
pub(crate) fn ipv4(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    if m.iter().filter(|&&b| b == b'.').count() != 3 {
        return Check::Poison;
    }
    // Inside a longer dotted number (`5.1.2.3.4`), a version (`v1.2.3.4`), a section (`§1.2.3.4`).
    if continues_number(h, s) || (s >= 2 && h[s - 1] == b'.' && h[s - 2].is_ascii_digit()) {
        return Check::Poison;
    }
    // A release with a suffix, which the pattern takes in to judge it (the kernel's
    // `5.15.153.1-microsoft-standard-WSL2`, `1.2.3.4-beta`).
    if m.last().is_some_and(u8::is_ascii_alphabetic) {
        return Check::Poison;
    }
    // The four octets' values and lengths, in one pass (the pattern makes them 1–3 digits).
    let (mut o, mut len, mut k) = ([0u32; 4], [0usize; 4], 0);
    for &b in m {
        if b == b'.' {
            k += 1;
        } else if let (true, Some(v), Some(l)) = (b.is_ascii_digit(), o.get_mut(k), len.get_mut(k))
        {
            *v = *v * 10 + u32::from(b - b'0');
            *l += 1;
        } else {
            return Check::Reject;
        }
    }
    if len.contains(&0) {
        return Check::Reject;
    }
    let special = NOT_PERSONAL.iter().any(|&(a, (b0, b1), (c0, c1))| {
        o[0] == a && (b0..=b1).contains(&o[1]) && (c0..=c1).contains(&o[2])
    });
    let one_digit = len.iter().filter(|&&l| l == 1).count();
    // Object identifiers: the first arc is 0, 1 or 2, the second small (`1.3.101.112`,
    // `2.5.29.35`).
    let oid = o[0] <= 2 && len[1] == 1;
    let repeated = o.iter().all(|&x| x == o[0]);
    // Placeholders counting up or down: `1.2.3.4`, `10.20.30.40`, `101.102.103.104`.
    let d = i64::from(o[1]) - i64::from(o[0]);
    let progression = (1..4).all(|k| i64::from(o[k]) - i64::from(o[k - 1]) == d);
    yes(!special
        && o[0] < 224
        && o[3] != 0
        && o[3] != 255
        && !RESOLVERS.contains(&o)
        && !repeated
        && !progression
        && !oid
        && one_digit < 3)
}

/// File extensions that look like top-level domains in `icon@2x.png`-style names.
const NOT_TLDS: &[&[u8]] = &[
    b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"bmp", b"ico", b"css", b"js", b"ts", b"mjs",
    b"tsx", b"jsx", b"json", b"yaml", b"yml", b"toml", b"lock", b"md", b"txt", b"py", b"rs", b"go",
    b"rb", b"java", b"kt", b"swift", b"php", b"html", b"htm", b"xml", b"zip", b"gz", b"tar",
    b"map", b"wasm", b"pdf", b"mp4", b"mp3", b"woff", b"woff2", b"ttf",
];

/// Domains whose `name@domain` strings are not mailboxes: SSH's extension names
/// (`chacha20-poly1305@openssh.com`, `curve25519-sha256@libssh.org`).
const NOT_MAIL_DOMAINS: &[&[u8]] = &[b"openssh.com", b"libssh.org"];

/// Git hosts' SSH remotes (`git@github.com:org/repo`).
const GIT_HOSTS: &[&[u8]] = &[
    b"github.com",
    b"gitlab.com",
    b"bitbucket.org",
    b"ssh.dev.azure.com",
    b"codeberg.org",
];

/// E-mail addresses: no empty or dotted-out local part, domain labels that do not start or
/// end with `-`, a top-level domain that is not a file extension; not a URL's `user:pass@host`
/// (a `:` before, other than `mailto:`) or `//user@host`, not a git remote, not an SSH
/// algorithm name.
pub(crate) fn email(h: &[u8], s: usize, e: usize) -> Check {
    let m = &h[s..e];
    let Some(at) = m.iter().position(|&b| b == b'@') else {
        return Check::Reject;
    };
    let (local, domain) = (&m[..at], &m[at + 1..]);
    if local.is_empty() || local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
        return Check::Reject;
    }
    let mailto = s >= 7 && h[s - 7..s].eq_ignore_ascii_case(b"mailto:");
    // A URL's `user:pass@host` or `//user@host` is no mailbox.
    let authority = s >= 2 && &h[s - 2..s] == b"//";
    if authority || (s > 0 && h[s - 1] == b':' && !mailto) {
        return Check::Reject;
    }
    if domain
        .split(|&b| b == b'.')
        .any(|l| l.is_empty() || l.starts_with(b"-") || l.ends_with(b"-"))
    {
        return Check::Reject;
    }
    let is = |list: &[&[u8]]| list.iter().any(|d| d.eq_ignore_ascii_case(domain));
    if is(NOT_MAIL_DOMAINS) || (local == b"git" && is(GIT_HOSTS)) {
        return Check::Reject;
    }
    let tld = domain.rsplit(|&b| b == b'.').next().unwrap_or_default();
    yes(!is_file_extension(tld))
}

/// Whether `tld` is one of [`NOT_TLDS`], ASCII case-insensitively: one binary search over
/// their keys instead of comparing it with each.
fn is_file_extension(tld: &[u8]) -> bool {
    static KEYS: LazyLock<Vec<u64>> = LazyLock::new(|| {
        let mut keys: Vec<u64> = NOT_TLDS.iter().filter_map(|t| short_key(t)).collect();
        keys.sort_unstable();
        keys
    });
    short_key(tld).is_some_and(|k| KEYS.binary_search(&k).is_ok())
}

/// A string of at most 7 bytes, lowercased, and its length packed into a `u64` (distinct
/// strings, ignoring ASCII case, have distinct keys); `None` if it is longer.
fn short_key(t: &[u8]) -> Option<u64> {
    if t.len() > 7 {
        return None;
    }
    let bytes = t
        .iter()
        .fold(0u64, |k, b| k << 8 | u64::from(b.to_ascii_lowercase()));
    Some((t.len() as u64) << 56 | bytes)
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
    fn file_extensions_are_keyed() {
        assert!(NOT_TLDS.iter().all(|t| short_key(t).is_some()));
        assert!(is_file_extension(b"PNG") && is_file_extension(b"woff2"));
        assert!(!is_file_extension(b"com") && !is_file_extension(b"woff22"));
    }

    #[test]
    fn iban_known_numbers() {
        assert!(iban_checksum(b"DE89370400440532013000"));
        assert!(iban_checksum(b"GB82WEST12345698765432"));
        assert!(!iban_checksum(b"DE89370400440532013001"));
    }
}
