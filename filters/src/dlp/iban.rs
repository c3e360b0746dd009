//! IBANs: the ISO 13616 registry's country lengths and the ISO 7064 mod 97-10 check digits.

use super::validate::{yes, Check};

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

/// [`IBAN_LENGTHS`] by country code (`(first letter - 'A') * 26 + second`; 0: no IBANs), so
/// that a candidate's country costs one lookup.
const LENGTH_BY_COUNTRY: [u8; 26 * 26] = {
    let mut t = [0u8; 26 * 26];
    let mut i = 0;
    while i < IBAN_LENGTHS.len() {
        let (cc, len) = IBAN_LENGTHS[i];
        t[(cc[0] - b'A') as usize * 26 + (cc[1] - b'A') as usize] = len as u8;
        i += 1;
    }
    t
};

/// The registered IBAN length of a country (0: none).
fn country_length(a: u8, b: u8) -> usize {
    if !(a.is_ascii_uppercase() && b.is_ascii_uppercase()) {
        return 0;
    }
    let i = usize::from(a - b'A') * 26 + usize::from(b - b'A');
    LENGTH_BY_COUNTRY.get(i).map_or(0, |&n| usize::from(n))
}

/// The mod-97 remainder of a decimal number fed digit by digit (a letter counts as two
/// digits, `A` = 10 … `Z` = 35). The digits are gathered in a `u64` and reduced only when it
/// could overflow: one division per 15 digits or so, not one per character.
#[derive(Default)]
struct Mod97(u64);

impl Mod97 {
    /// Appends a character; false if it is not an uppercase letter or digit.
    #[inline]
    fn push(&mut self, c: u8) -> bool {
        self.0 = match c {
            b'0'..=b'9' => self.0 * 10 + u64::from(c - b'0'),
            b'A'..=b'Z' => self.0 * 100 + u64::from(c - b'A') + 10,
            _ => return false,
        };
        if self.0 >= 1 << 56 {
            self.0 %= 97;
        }
        true
    }

    fn rem(&self) -> u64 {
        self.0 % 97
    }
}

/// ISO 7064 mod 97-10 over an IBAN with its first four characters moved to the end.
pub fn iban_checksum(compact: &[u8]) -> bool {
    if compact.len() < 5 {
        return false;
    }
    let mut m = Mod97::default();
    compact[4..].iter().chain(&compact[..4]).all(|&c| m.push(c)) && m.rem() == 1
}

/// IBANs: a registered country, that country's length, and the mod-97 check digits. One pass
/// over the candidate: its spaces skipped, its first four characters kept for the end.
pub(crate) fn iban(h: &[u8], s: usize, e: usize) -> Check {
    let mut head = [0u8; 4];
    let mut n = 0;
    let mut m = Mod97::default();
    for &b in &h[s..e] {
        if b == b' ' {
            continue;
        }
        match head.get_mut(n) {
            Some(slot) => *slot = b,
            None if m.push(b) => {}
            None => return Check::Reject,
        }
        n += 1;
    }
    let ok = (5..=34).contains(&n)
        && country_length(head[0], head[1]) == n
        && head.iter().all(|&c| m.push(c))
        && m.rem() == 1;
    yes(ok)
}
