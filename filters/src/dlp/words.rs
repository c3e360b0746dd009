//! The word-start index: the trigger literals whose every occurrence starts a word, looked up
//! by their first three bytes at each word start of the text.
//!
//! Almost every token format begins with `\b` and a literal (`ghp_`, `AKIA`, `xox`), so a
//! match can only start where a word does. The scanner finds word starts with one vector pass
//! (the same one that finds digits, `@` and `=`), and at each it hashes the next three bytes
//! into a 64 Ki-bit filter that fits in L1. Only a hit looks at the literals themselves. That
//! costs a handful of instructions per word, however many literals there are, where a Teddy
//! pass per 16 literals cost one instruction per byte each (five passes for the 71 literals
//! of the default packs).
//!
//! A literal is *word-anchored* when it has a word start at a fixed offset: either its first
//! byte is a word byte and the pattern requires `\b` before it, or a word byte follows a
//! non-word byte inside it (`-----BEGIN` at its `B`, `"private_key"` at its `p`). The others
//! stay with the Aho-Corasick passes ([`super::literals::LiteralSet`]).

use regex_automata::dfa::dense;

use super::literals::{needs_word_start, next_bytes};
use super::scanner::is_word;

/// The filter's size: 2^16 bits (8 KiB).
const FILTER_BITS: u32 = 16;
const FILTER_WORDS: usize = 1 << (FILTER_BITS - 6);

/// A key shorter than three bytes (`gh`, `SK`) is widened by the bytes its pattern allows
/// after it; one that allows more than this many stays with the Aho-Corasick passes.
const MAX_WIDENING: usize = 96;

/// One literal of one detector, by the key at its word start.
pub(super) struct Entry {
    pub(super) literal: Box<[u8]>,
    /// Where in the literal its word start is (the key begins there).
    pub(super) offset: usize,
    pub(super) detector: usize,
}

pub(super) struct WordIndex {
    filter: Box<[u64; FILTER_WORDS]>,
    /// The distinct keys, sorted, and for each the range of its entries.
    keys: Vec<u32>,
    spans: Vec<(u32, u32)>,
    entries: Vec<Entry>,
    /// Whether some key starts with a digit (else word starts at digits are skipped).
    pub(super) digit_led: bool,
}

/// The filter bit of a key, from the key shifted up by a byte (so that four bytes read at once
/// and shifted give the same bit as their first three).
#[inline]
fn slot(shifted: u32) -> usize {
    (shifted.wrapping_mul(0x9E37_79B1) >> (32 - FILTER_BITS)) as usize
}

fn key_of(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16
}

/// The three bytes from `j` as a key; `None` when fewer remain.
#[inline]
pub(super) fn key_at(hay: &[u8], j: usize) -> Option<u32> {
    match hay.get(j..j + 4) {
        Some(b) => Some(u32::from_le_bytes([b[0], b[1], b[2], 0])),
        None => hay.get(j..j + 3).map(key_of),
    }
}

/// Where a literal's word start is, if every occurrence of it has one there.
fn word_start_offset(lit: &[u8], dfa: &dense::DFA<Vec<u32>>) -> Option<usize> {
    let k = (0..lit.len()).find(|&k| is_word(lit[k]) && (k == 0 || !is_word(lit[k - 1])))?;
    (k > 0 || needs_word_start(dfa, lit[0])).then_some(k)
}

/// The keys a literal is found by, from its word start `k`: its next three bytes, or, when
/// only two remain, those two and each byte its pattern allows next.
fn keys_of(lit: &[u8], k: usize, dfa: &dense::DFA<Vec<u32>>) -> Option<Vec<u32>> {
    let rest = &lit[k..];
    match rest.len() {
        0 | 1 => None,
        2 => {
            let (next, can_end) = next_bytes(dfa, lit);
            let keys: Vec<u32> = (0..=255u8)
                .filter(|&b| next[usize::from(b)])
                .map(|b| key_of(&[rest[0], rest[1], b]))
                .collect();
            (!can_end && !keys.is_empty() && keys.len() <= MAX_WIDENING).then_some(keys)
        }
        _ => Some(vec![key_of(rest)]),
    }
}

impl WordIndex {
    /// Indexes the word-anchored literals of `lits` (literal, detector); returns the index
    /// (`None` when no literal is word-anchored) and the literals left for the other passes.
    pub(super) fn build<'a>(
        lits: &[(Vec<u8>, usize)],
        dfa_of: impl Fn(usize) -> &'a dense::DFA<Vec<u32>>,
    ) -> (Option<WordIndex>, Vec<(Vec<u8>, usize)>) {
        let mut keyed: Vec<(u32, Entry)> = Vec::new();
        let mut rest = Vec::new();
        for (lit, d) in lits {
            // A literal that extends another of the same detector finds nothing more.
            let shadowed = lits
                .iter()
                .any(|(o, od)| od == d && o.len() < lit.len() && lit.starts_with(o));
            if shadowed {
                continue;
            }
            let dfa = dfa_of(*d);
            let found = word_start_offset(lit, dfa).and_then(|k| Some((k, keys_of(lit, k, dfa)?)));
            let Some((offset, keys)) = found else {
                rest.push((lit.clone(), *d));
                continue;
            };
            for key in keys {
                let entry = Entry {
                    literal: lit.clone().into_boxed_slice(),
                    offset,
                    detector: *d,
                };
                keyed.push((key, entry));
            }
        }
        if keyed.is_empty() {
            return (None, rest);
        }
        keyed.sort_by_key(|(key, e)| (*key, e.detector));
        keyed.dedup_by(|a, b| {
            a.0 == b.0 && a.1.detector == b.1.detector && a.1.literal == b.1.literal
        });
        let mut ix = WordIndex {
            filter: Box::new([0u64; FILTER_WORDS]),
            keys: Vec::new(),
            spans: Vec::new(),
            entries: Vec::with_capacity(keyed.len()),
            digit_led: false,
        };
        for (key, entry) in keyed {
            if ix.keys.last() != Some(&key) {
                let at = ix.entries.len() as u32;
                ix.keys.push(key);
                ix.spans.push((at, at));
                let s = slot(key << 8);
                ix.filter[s >> 6] |= 1 << (s & 63);
                ix.digit_led |= (key as u8).is_ascii_digit();
            }
            ix.entries.push(entry);
            if let Some(span) = ix.spans.last_mut() {
                span.1 += 1;
            }
        }
        (Some(ix), rest)
    }

    /// Whether some literal may have `key` at its word start (false positives are possible,
    /// false negatives are not).
    #[inline]
    pub(super) fn may_hold(&self, key: u32) -> bool {
        self.may_hold_word(key << 8)
    }

    /// [`WordIndex::may_hold`] of the first three of four bytes read little-endian and
    /// shifted left by one byte.
    #[inline]
    pub(super) fn may_hold_word(&self, shifted: u32) -> bool {
        let s = slot(shifted);
        self.filter[(s >> 6) % FILTER_WORDS] >> (s & 63) & 1 == 1
    }

    /// The literals with `key` at their word start.
    pub(super) fn entries(&self, key: u32) -> &[Entry] {
        match self.keys.binary_search(&key) {
            Ok(i) => {
                let (a, b) = self.spans[i];
                &self.entries[a as usize..b as usize]
            }
            Err(_) => &[],
        }
    }
}
