//! The digit-led candidates: which of the [`Trigger::Numeric`] detectors a digit run (or the
//! `+`/`(` before it) could start a match of, decided by table lookups before any DFA runs.
//!
//! Digit runs are everywhere in technical text (versions, timestamps, hashes, prices) and
//! almost none of them starts a finding, so the cost that matters is ruling a run out. The
//! [`NumericShape`]s are folded, when the scanner is built, into bit masks of detectors
//! (bit `k`: the `k`-th digit-led one): by the first run's length, by the byte after it, and
//! by what the run of number bytes from the start holds. A run costs two lookups and, only
//! when some detector survives them, one walk over at most [`NUMERIC_MAX_LEN`] bytes.
//!
//! [`Trigger::Numeric`]: crate::dlp::detectors::Trigger::Numeric

use super::{is_word, FindCx, Scanner};
use crate::dlp::detectors::{NumericShape, NUMERIC_MAX_LEN};

/// The most digit-led detectors a scanner can have (one bit each). Only built-ins are
/// digit-led, and there are five.
pub(super) const MAX_NUMERIC: usize = 64;

/// The [`NumericShape`]s of a scanner's digit-led detectors as bit masks.
pub(super) struct NumericTable {
    /// By the first run's length (a longer run: the last row): the detectors whose
    /// `first_run` admits it.
    by_run: Vec<u64>,
    /// By the byte after the first run (index 256: none, the text ends): the detectors whose
    /// `after_first` admits it.
    by_next: Box<[u64; 257]>,
    /// The detectors whose matches may start with `+` or `(`.
    signed: u64,
    /// Every digit-led detector.
    all: u64,
    /// By whether the start is signed, whether the cluster holds a `.`, and its digits (at
    /// most [`NUMERIC_MAX_LEN`]): the detectors whose digit count and `.` it satisfies.
    by_cluster: [[[u64; NUMERIC_MAX_LEN + 1]; 2]; 2],
}

impl NumericTable {
    /// The masks of `shapes`, in order (the first `MAX_NUMERIC` of them).
    pub(super) fn new(shapes: &[(usize, NumericShape)]) -> NumericTable {
        let shapes = &shapes[..shapes.len().min(MAX_NUMERIC)];
        let mask = |ok: &dyn Fn(&NumericShape) -> bool| {
            shapes
                .iter()
                .enumerate()
                .filter(|(_, (_, sh))| ok(sh))
                .fold(0u64, |m, (k, _)| m | 1 << k)
        };
        let longest = shapes.iter().map(|(_, sh)| sh.first_run.1).max();
        let rows = usize::from(longest.unwrap_or(0)) + 2;
        let by_run = (0..rows)
            .map(|r| {
                let first = u8::try_from(r).unwrap_or(u8::MAX);
                mask(&|sh| (sh.first_run.0..=sh.first_run.1).contains(&first))
            })
            .collect();
        let mut by_next = Box::new([0u64; 257]);
        for (i, slot) in by_next.iter_mut().enumerate() {
            let next = u8::try_from(i).ok();
            *slot = mask(&|sh| {
                sh.after_first.is_empty() || next.is_some_and(|b| sh.after_first.contains(&b))
            });
        }
        let mut by_cluster = [[[0u64; NUMERIC_MAX_LEN + 1]; 2]; 2];
        for (signed, by_dot) in by_cluster.iter_mut().enumerate() {
            for (dot, by_digits) in by_dot.iter_mut().enumerate() {
                for (digits, slot) in by_digits.iter_mut().enumerate() {
                    *slot = mask(&|sh| {
                        let min = match (signed == 1, sh.signed) {
                            (true, Some(m)) => m,
                            _ => sh.min_digits,
                        };
                        usize::from(min) <= digits && (dot == 1 || !sh.needs_dot)
                    });
                }
            }
        }
        NumericTable {
            by_run,
            by_next,
            signed: mask(&|sh| sh.signed.is_some()),
            all: mask(&|_| true),
            by_cluster,
        }
    }

    /// The detectors an unsigned start could be: its first run is `run` digits long and
    /// followed by `next`.
    #[inline]
    fn unsigned(&self, run: usize, next: Option<u8>) -> u64 {
        let row = run.min(self.by_run.len().saturating_sub(1));
        let run_ok = self.by_run.get(row).copied().unwrap_or(0);
        run_ok & self.by_next[next.map_or(256, usize::from)]
    }
}

impl Scanner {
    /// A run of `run` digits starts at `j`.
    pub(super) fn digit_run_at(&self, j: usize, run: usize, from: usize, cx: &mut FindCx<'_>) {
        let hay = cx.hay;
        match if j > 0 { Some(hay[j - 1]) } else { None } {
            Some(p) if is_word(p) => {
                if let Some(ib) = self.iban {
                    let s = j.wrapping_sub(2);
                    if j >= 2
                        && s >= from
                        && hay[s].is_ascii_uppercase()
                        && p.is_ascii_uppercase()
                        && (s == 0 || !is_word(hay[s - 1]))
                    {
                        self.try_at(ib, s, cx);
                    }
                }
            }
            prev => {
                self.numeric_at(j, false, run, cx);
                if matches!(prev, Some(b'+' | b'(')) && j > from {
                    self.numeric_at(j - 1, true, run, cx);
                }
            }
        }
    }

    /// Tries the digit-led detectors at `s` (`signed`: at the `+` or `(` before a digit run)
    /// whose digits start with a run of `run`, skipping those whose [`NumericShape`] the bytes
    /// from `s` cannot have. Bytes that reach the end of unfinished text are not judged: the
    /// DFAs decide (and hold them back).
    fn numeric_at(&self, s: usize, signed: bool, run: usize, cx: &mut FindCx<'_>) {
        let t = &self.numeric_table;
        let next = cx.hay.get(s + usize::from(signed) + run).copied();
        let mut mask = if signed {
            t.signed
        } else if next.is_none() && !cx.fin {
            t.all
        } else {
            t.unsigned(run, next)
        };
        if mask == 0 {
            return;
        }
        mask = t.admitted(cx.hay, s, signed, run, cx.fin, mask);
        while mask != 0 {
            let k = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if let Some(&(d, _)) = self.numeric.get(k) {
                self.try_at(d, s, cx);
            }
        }
    }
}

impl NumericTable {
    /// The detectors of `mask` whose digit count and `.` the run of number bytes (digits and
    /// ` -.()+`) from `s` has, counted up to the longest digit-led match; all of them when
    /// that run reaches the end of unfinished text (then nothing can be ruled out yet). The
    /// first `run` digits (after the sign, when `signed`) are known and not read again.
    fn admitted(
        &self,
        hay: &[u8],
        s: usize,
        signed: bool,
        run: usize,
        fin: bool,
        mask: u64,
    ) -> u64 {
        let cap = hay.len().min(s + NUMERIC_MAX_LEN);
        let known = (usize::from(signed) + run).min(cap - s);
        let (mut digits, mut dot, mut i) = (known - usize::from(signed), false, s + known);
        while i < cap {
            match hay[i] {
                b'0'..=b'9' => digits += 1,
                b'.' => dot = true,
                b' ' | b'-' | b'(' | b')' | b'+' => {}
                _ => break,
            }
            i += 1;
        }
        if i == hay.len() && !fin {
            return mask;
        }
        mask & self.by_cluster[usize::from(signed)][usize::from(dot)][digits]
    }
}

#[cfg(test)]
mod tests {
    use super::super::builtins;
    use super::*;
    use crate::dlp::detectors::Trigger;

    #[test]
    fn the_digit_led_builtins_fit_the_masks() {
        let n = builtins()
            .iter()
            .filter(|d| matches!(d.trigger, Trigger::Numeric(_)))
            .count();
        assert!(n <= MAX_NUMERIC);
    }
}
