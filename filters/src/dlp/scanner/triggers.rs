//! The one vector pass that seeds the built-in detectors: each 64-byte block is classified
//! once ([`classify64`]), and only its word starts (token prefixes, via the [`WordIndex`]) and
//! its digit-run starts and `@`s (personal data) are visited.

use super::super::classify::{classify64, Classes};
use super::super::words::{key_at, WordIndex};
use super::{is_word, FindCx, Scanner};

impl Scanner {
    /// Whether the block pass has anything to find.
    pub(super) fn has_block_triggers(&self) -> bool {
        self.words.is_some() || self.has_pii_triggers()
    }

    /// Whether some detector is seeded by digits or `@`.
    fn has_pii_triggers(&self) -> bool {
        self.email.is_some() || !self.numeric.is_empty() || self.iban.is_some()
    }

    /// Visits the trigger positions at or after `from`, block by block.
    pub(super) fn find_in_blocks(&self, from: usize, cx: &mut FindCx<'_>) {
        let hay = cx.hay;
        let pii = self.has_pii_triggers();
        let mut base = from;
        while base < hay.len() {
            let c = classify64(hay, base);
            let before = base.checked_sub(1).map(|i| hay[i]);
            // The bytes that follow a word byte; the others of `c.word` start words.
            let after_word = (c.word << 1) | u64::from(before.is_some_and(is_word));
            let word_starts = c.word & !after_word;
            if let Some(words) = &self.words {
                let mut starts = word_starts;
                if !words.digit_led {
                    starts &= !c.digit;
                }
                if starts != 0 {
                    self.word_starts(words, base, starts, from, cx);
                }
            }
            if pii && (c.digit | c.at) != 0 {
                let starts = self.digit_runs(&c, before, after_word, word_starts);
                self.digits_and_at(base, c.digit, starts | c.at, from, cx);
            }
            base += 64;
        }
    }

    /// The digit-run starts of a block worth a look (`before`: the byte before it;
    /// `after_word`, `word_starts`: the block's bytes after a word byte, and its word starts).
    /// A run after a letter or `_` (in hashes, UUIDs, names) can only be an IBAN's check
    /// digits, and only after a word start and two letters; the first two of the block are
    /// left to [`Scanner::digit_run_at`], which reads the bytes before them.
    #[inline]
    fn digit_runs(
        &self,
        c: &Classes,
        before: Option<u8>,
        after_word: u64,
        word_starts: u64,
    ) -> u64 {
        let after_digit = u64::from(before.is_some_and(|b| b.is_ascii_digit()));
        let starts = c.digit & !((c.digit << 1) | after_digit);
        let mut keep = !after_word | 0b11;
        if self.iban.is_some() {
            let letters = c.word & !c.digit;
            keep |= (letters << 1) & (letters << 2) & (word_starts << 2);
        }
        starts & keep
    }

    /// The word starts of the block at `base` (bits of `starts`). The common case, a block
    /// with four bytes after it, reads each key in one load.
    #[inline]
    fn word_starts(
        &self,
        words: &WordIndex,
        base: usize,
        mut starts: u64,
        from: usize,
        cx: &mut FindCx<'_>,
    ) {
        let hay = cx.hay;
        if let Some(block) = hay.get(base..base + 68) {
            let Ok(block) = <&[u8; 68]>::try_from(block) else {
                return;
            };
            while starts != 0 {
                let k = starts.trailing_zeros() as usize % 64;
                starts &= starts - 1;
                let four = u32::from_le_bytes([block[k], block[k + 1], block[k + 2], block[k + 3]]);
                if words.may_hold_word(four << 8) {
                    self.word_start_at(words, four & 0xFF_FFFF, base + k, from, cx);
                }
            }
        } else {
            while starts != 0 {
                let j = base + starts.trailing_zeros() as usize;
                starts &= starts - 1;
                // With fewer than three bytes left no literal is whole: `partial_tail`
                // holds them.
                if let Some(key) = key_at(hay, j).filter(|&key| words.may_hold(key)) {
                    self.word_start_at(words, key, j, from, cx);
                }
            }
        }
    }

    /// The literals whose word start may be at `j` (its three bytes, `key`, passed the filter).
    #[inline(never)]
    fn word_start_at(
        &self,
        words: &WordIndex,
        key: u32,
        j: usize,
        from: usize,
        cx: &mut FindCx<'_>,
    ) {
        let hay = cx.hay;
        for e in words.entries(key) {
            let Some(s) = j.checked_sub(e.offset).filter(|&s| s >= from) else {
                continue;
            };
            let lit = &e.literal[..];
            let whole = hay.get(s..s + lit.len()).map(|b| b == lit);
            // A literal cut off by the end of unfinished text is tried: its DFA holds it.
            let here = whole.unwrap_or_else(|| !cx.fin && lit.starts_with(&hay[s..]));
            if here {
                self.try_at(e.detector, s, cx);
            }
        }
    }

    /// The digit-run starts and `@`s of one block (`events`; `digits` is its digit mask).
    fn digits_and_at(
        &self,
        base: usize,
        digits: u64,
        mut events: u64,
        from: usize,
        cx: &mut FindCx<'_>,
    ) {
        let hay = cx.hay;
        while events != 0 {
            let k = events.trailing_zeros();
            let j = base + k as usize;
            events &= events - 1;
            if hay[j] == b'@' {
                if let Some(e) = self.email {
                    self.email_at(e, j, from, cx);
                }
            } else {
                // The run's length from the mask; one that reaches the block's end is
                // measured on.
                let mut run = (!(digits >> k)).trailing_zeros() as usize;
                if k as usize + run == 64 {
                    run += hay[base + 64..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                }
                self.digit_run_at(j, run, from, cx);
            }
        }
    }
}
