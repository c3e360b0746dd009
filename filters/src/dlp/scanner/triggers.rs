//! The one vector pass that seeds every built-in detector: each 64-byte block is classified
//! once ([`classify64`]), and only its word starts (token prefixes, via the [`WordIndex`]),
//! digit-run starts and `@`s (personal data) and `:`/`=` (assignments, `://`) are visited.

use super::super::classify::classify64;
use super::super::words::{key_at, WordIndex};
use regex_automata::dfa::Automaton;
use regex_automata::{Anchored, Input};

use super::{is_word, walk, Detector, FindCx, Scanner};

/// A detector found from an operator byte, looking back (see
/// [`Trigger::Assignment`](super::super::detectors::Trigger::Assignment)).
pub(super) struct Assignment {
    pub(super) detector: usize,
    /// The greatest distance from a match's start to its operator.
    pub(super) reach: usize,
    /// The bytes a match can hold before its operator.
    pub(super) class: Box<[bool; 256]>,
    /// The two bytes a match can start with (bit `b0 << 8 | b1`).
    pub(super) first: Box<[u64; 1024]>,
    /// Where a match may start, reading back from its operator (a reverse DFA).
    pub(super) before: Detector,
    /// What the text from the operator must start with.
    pub(super) after: Detector,
}

impl Assignment {
    /// Calls `f` with each position from `from` on where the text up to the operator at `j`
    /// can be a match's first part, reading back from `j`.
    fn starts_before(&self, hay: &[u8], j: usize, from: usize, mut f: impl FnMut(usize)) {
        let dfa = &self.before.dfa;
        let start = match &self.before.starts {
            // For a reverse DFA the look-behind is the byte after the span.
            Some(t) => Ok(t[usize::from(hay[j])]),
            None => {
                dfa.start_state_reverse(&Input::new(hay).range(from..j).anchored(Anchored::Yes))
            }
        };
        let Ok(mut sid) = start else {
            return;
        };
        let mut i = j;
        while i > from {
            i -= 1;
            sid = dfa.next_state(sid, hay[i]);
            if dfa.is_special_state(sid) {
                if dfa.is_match_state(sid) {
                    // Matches show one byte late: the first part is `hay[i + 1..j]`.
                    f(i + 1);
                } else if dfa.is_dead_state(sid) || dfa.is_quit_state(sid) {
                    return;
                }
            }
        }
        let last = match from.checked_sub(1) {
            Some(b) => dfa.next_state(sid, hay[b]),
            None => dfa.next_eoi_state(sid),
        };
        if dfa.is_match_state(last) {
            f(from);
        }
    }

    /// Whether a match can start at `k` (the byte after it is in the text).
    #[inline]
    fn may_start(&self, hay: &[u8], k: usize) -> bool {
        let i = usize::from(hay[k]) << 8 | usize::from(hay[k + 1]);
        self.first[(i >> 6) % 1024] >> (i & 63) & 1 == 1
    }

    /// Whether the operator at `j` may be a match's: its pattern matches from there, or the
    /// text ends before that is decided.
    fn operator_fits(&self, hay: &[u8], j: usize, fin: bool) -> bool {
        let dfa = &self.after.dfa;
        let start = match &self.after.starts {
            Some(t) => Ok(t[usize::from(hay[j - 1])]),
            None => dfa.start_state_forward(&Input::new(hay).range(j..).anchored(Anchored::Yes)),
        };
        let Ok(mut sid) = start else {
            return true;
        };
        for &b in &hay[j..] {
            sid = dfa.next_state(sid, b);
            if dfa.is_special_state(sid) {
                if dfa.is_match_state(sid) {
                    return true;
                }
                if dfa.is_dead_state(sid) || dfa.is_quit_state(sid) {
                    return false;
                }
            }
        }
        !fin || dfa.is_match_state(dfa.next_eoi_state(sid))
    }
}

impl Scanner {
    /// Whether the block pass has anything to find.
    pub(super) fn has_block_triggers(&self) -> bool {
        self.words.is_some()
            || self.email.is_some()
            || !self.numeric.is_empty()
            || self.iban.is_some()
            || self.has_ops()
    }

    fn has_ops(&self) -> bool {
        !self.op_literals.is_empty() || !self.assignments.is_empty()
    }

    /// Visits the trigger positions at or after `from`, block by block.
    pub(super) fn find_in_blocks(&self, from: usize, cx: &mut FindCx<'_>) {
        let hay = cx.hay;
        let pii = self.email.is_some() || !self.numeric.is_empty() || self.iban.is_some();
        let ops = self.has_ops();
        let mut base = from;
        while base < hay.len() {
            let c = classify64(hay, base);
            let before = base.checked_sub(1).map(|i| hay[i]);
            if let Some(words) = &self.words {
                let mut starts = c.word & !((c.word << 1) | u64::from(before.is_some_and(is_word)));
                if !words.digit_led {
                    starts &= !c.digit;
                }
                if starts != 0 {
                    self.word_starts(words, base, starts, from, cx);
                }
            }
            if pii {
                let after_digit = u64::from(before.is_some_and(|b| b.is_ascii_digit()));
                let starts = c.digit & !((c.digit << 1) | after_digit);
                self.digits_and_at(base, c.digit, starts | c.at, from, cx);
            }
            if ops {
                let mut at = c.op;
                while at != 0 {
                    let j = base + at.trailing_zeros() as usize;
                    at &= at - 1;
                    self.op_at(j, from, cx);
                }
            }
            base += 64;
        }
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
                let four = [block[k], block[k + 1], block[k + 2], block[k + 3]];
                if words.may_hold_word(u32::from_le_bytes(four) << 8) {
                    self.word_start_at(words, base + k, from, cx);
                }
            }
        } else {
            while starts != 0 {
                let j = base + starts.trailing_zeros() as usize;
                starts &= starts - 1;
                // With fewer than three bytes left no literal is whole: `partial_tail`
                // holds them.
                if key_at(hay, j).is_some_and(|key| words.may_hold(key)) {
                    self.word_start_at(words, j, from, cx);
                }
            }
        }
    }

    /// The literals whose word start may be at `j` (its key passed the filter).
    #[inline(never)]
    fn word_start_at(&self, words: &WordIndex, j: usize, from: usize, cx: &mut FindCx<'_>) {
        let hay = cx.hay;
        let Some(key) = key_at(hay, j) else {
            return;
        };
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

    /// A `:` or `=` at `j`: the literals that start with it, and the assignments it ends.
    fn op_at(&self, j: usize, from: usize, cx: &mut FindCx<'_>) {
        let hay = cx.hay;
        for (lit, d) in &self.op_literals {
            // The second byte first: most operators are followed by neither `/` nor `=`.
            if hay.get(j + 1) == lit.get(1) && hay[j..].starts_with(lit) {
                self.try_at(*d, j, cx);
            }
        }
        for a in &self.assignments {
            // Every start within reach whose bytes up to `j` the match can hold; the
            // operator is looked at only when there is one.
            if j == from || !a.class[usize::from(hay[j - 1])] {
                continue;
            }
            let mut fits = None;
            a.starts_before(hay, j, from, |k| {
                if *fits.get_or_insert_with(|| a.operator_fits(hay, j, cx.fin)) {
                    self.try_at(a.detector, k, cx);
                }
            });
        }
    }

    /// The earliest start at or after `from` of an assignment whose operator the next bytes
    /// could still bring (`hay.len()` when there is none).
    pub(super) fn assignment_tail(&self, hay: &[u8], from: usize) -> usize {
        let n = hay.len();
        let mut p = n;
        let mut ends = Vec::new();
        for a in &self.assignments {
            let lo = n.saturating_sub(a.reach).max(from);
            let mut k = n;
            while k > lo && a.class[usize::from(hay[k - 1])] {
                k -= 1;
                if k + 1 == n || a.may_start(hay, k) {
                    ends.clear();
                    if !walk(self.detector(a.detector), hay, k, false, &mut ends) {
                        p = p.min(k);
                    }
                }
            }
        }
        p
    }
}
