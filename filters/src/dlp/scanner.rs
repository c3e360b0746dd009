//! The scanning engine: cheap triggers find candidate starts, an anchored DFA per detector
//! decides each candidate, a validator confirms it.
//!
//! # Why this shape
//!
//! Almost all text a gateway sees is clean, so the cost that matters is the cost of finding
//! *nothing*. Running a regex engine over every byte for twenty detectors would be far too
//! slow, so each detector names how its matches can start ([`Trigger`]) and the scanner finds
//! those positions with a few vectorised passes over the text:
//!
//! - one Aho-Corasick automaton (Teddy SIMD prefilter) over the required literal prefixes of
//!   the secret detectors and of custom regexes (`AKIA`, `ghp_`, `sk-`, `-----BEGIN`, …);
//! - one more, ASCII case-insensitive, over keyword rules;
//! - one SSE2 pass for digits and `@`, which seeds the digit-led PII detectors (cards, SSNs,
//!   phone numbers, IPv4, IBANs) and e-mail addresses.
//!
//! Only at those positions does a detector's DFA run, anchored, usually for a handful of bytes.
//!
//! # Streams
//!
//! The same code decides streamed text. Every decision it makes is *prefix-stable*: a
//! candidate is either decided from the bytes it has seen (its DFA died, or hit the length
//! cap), or it is reported as undecided and the caller holds the text back from its start. A
//! validator never looks past a candidate's end. So scanning a stream piece by piece gives
//! exactly the matches that scanning the whole text gives, which is what lets a client's
//! concatenated deltas equal the redacted non-streamed text. [`Scanner::partial_tail`] adds
//! the positions where a trigger itself could still be completed by the next bytes.

use std::sync::{Arc, OnceLock};

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::{primitives::StateID, start, syntax};
use regex_automata::{Anchored, Input, MatchKind};

use super::allow::Allow;
use super::detectors::{Builtin, BuiltinTrigger, NumericShape, Trigger, BUILTINS};
use super::literals::LiteralSet;
use super::validate::{Check, Validator};
use super::vocabulary::VOCABULARY;
use super::words::WordIndex;
use super::Action;

mod numeric;
mod triggers;

#[cfg(test)]
mod oracle_tests;

use numeric::NumericTable;

/// The longest match a detector may produce; a candidate still undecided after this many bytes
/// is decided with the match ends seen so far. Bounds both the work per candidate and how much
/// of a stream may be held back.
pub const MAX_MATCH_BYTES: usize = 16 * 1024;

/// The longest e-mail local part considered (RFC 5321).
const EMAIL_LOCAL_MAX: usize = 64;

/// One detector match: byte offsets into the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// The detector's index in [`Scanner::names`] (its priority: lower wins ties).
    pub detector: usize,
    pub start: usize,
    pub end: usize,
}

/// A compiled detector.
pub(crate) struct Detector {
    pub(crate) name: String,
    dfa: dense::DFA<Vec<u32>>,
    /// The anchored start state after each possible byte (index 256: at the start of the text).
    starts: Option<Box<[StateID; 257]>>,
    validator: Option<Validator>,
    pub(crate) trigger: Trigger,
    /// A custom rule's own actions for requests and for responses, overriding the direction's.
    pub(crate) rule_actions: [Option<Action>; 2],
    /// The shortest match it can make: a shorter text cannot hold one.
    pub(crate) min_len: usize,
    /// Whether its pattern has line anchors (`(?m)^`, `$`).
    line_anchored: bool,
}

/// Builds the anchored DFA of a pattern. Built-ins are ASCII-only (`unicode = false`); custom
/// regexes keep Unicode classes but have their word boundaries made ASCII beforehand.
pub(crate) fn compile_dfa(pattern: &str, unicode: bool) -> Result<dense::DFA<Vec<u32>>, String> {
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                .match_kind(MatchKind::All)
                .minimize(false)
                .determinize_size_limit(Some(64 << 20))
                .dfa_size_limit(Some(64 << 20)),
        )
        .syntax(syntax::Config::new().unicode(unicode).utf8(unicode))
        .build(pattern)
        .map_err(|e| {
            let msg = e.to_string();
            if msg.contains("exceeded") || msg.contains("limit") {
                "the pattern is too large to compile into a DFA (limit 64 MiB); simplify it".into()
            } else {
                last_line(&msg)
            }
        })
}

/// The last line of a multi-line regex error (`error: unclosed group`), without the prefix.
pub(crate) fn last_line(msg: &str) -> String {
    let line = msg
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(msg);
    line.trim().trim_start_matches("error: ").to_string()
}

impl Detector {
    fn builtin(b: &Builtin) -> Detector {
        // Built-in patterns are fixed and covered by tests; failing here is a bug in this file.
        let dfa = compile_dfa(b.pattern, false)
            .unwrap_or_else(|e| panic!("built-in DLP detector {} does not compile: {e}", b.name));
        let trigger = match b.trigger {
            BuiltinTrigger::Literals(l) => {
                Trigger::Literals(l.iter().map(|s| s.as_bytes().to_vec()).collect())
            }
            BuiltinTrigger::Email => Trigger::Email,
            BuiltinTrigger::Numeric(shape) => Trigger::Numeric(shape),
            BuiltinTrigger::Iban => Trigger::Iban,
        };
        let hir = syntax::parse(b.pattern).ok();
        let min_len = hir
            .as_ref()
            .and_then(|h| h.properties().minimum_len())
            .unwrap_or(0);
        let line_anchored = hir.is_none_or(|h| h.properties().look_set().contains_anchor());
        Detector {
            name: b.name.to_string(),
            starts: start_table(&dfa),
            dfa,
            validator: b.validator,
            trigger,
            rule_actions: [None, None],
            min_len,
            line_anchored,
        }
    }

    pub(crate) fn custom(
        name: &str,
        dfa: dense::DFA<Vec<u32>>,
        trigger: Trigger,
        rule_actions: [Option<Action>; 2],
    ) -> Detector {
        Detector {
            name: name.to_string(),
            starts: start_table(&dfa),
            dfa,
            validator: None,
            trigger,
            rule_actions,
            min_len: 1,
            line_anchored: false,
        }
    }

    pub(crate) fn dfa(&self) -> &dense::DFA<Vec<u32>> {
        &self.dfa
    }

    /// Marks a custom rule whose pattern anchors to lines.
    pub(crate) fn with_line_anchors(mut self, yes: bool) -> Detector {
        self.line_anchored = yes;
        self
    }

    /// The shortest match the rule can make (from its pattern or its keywords).
    pub(crate) fn with_min_len(mut self, n: usize) -> Detector {
        self.min_len = n.max(1);
        self
    }
}

/// Every anchored start state, by look-behind byte, so that a candidate costs no start-state
/// computation. `None` if some start state cannot be computed (the walk then asks the DFA).
fn start_table(dfa: &dense::DFA<Vec<u32>>) -> Option<Box<[StateID; 257]>> {
    let mut t = Box::new([StateID::ZERO; 257]);
    for (i, slot) in t.iter_mut().enumerate() {
        let lb = u8::try_from(i).ok();
        *slot = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes).look_behind(lb))
            .ok()?;
    }
    Some(t)
}

/// The built-in detectors, compiled once per process (config reloads reuse them).
pub(crate) fn builtins() -> &'static [Arc<Detector>] {
    static COMPILED: OnceLock<Vec<Arc<Detector>>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        BUILTINS
            .iter()
            .map(|b| Arc::new(Detector::builtin(b)))
            .collect()
    })
}

/// A set of compiled detectors and the trigger index over them.
pub struct Scanner {
    detectors: Vec<Arc<Detector>>,
    /// The word-anchored trigger literals (almost all).
    words: Option<WordIndex>,
    /// The other trigger literals (Aho-Corasick).
    literals: Option<LiteralSet>,
    keywords: Option<LiteralSet>,
    email: Option<usize>,
    numeric: Vec<(usize, NumericShape)>,
    /// The digit-led detectors' shapes as bit masks over `numeric`.
    numeric_table: NumericTable,
    iban: Option<usize>,
    bytes: Vec<(usize, Box<[bool; 256]>)>,
    /// The trigger literals by first byte (keywords lowercased, with their case-insensitive
    /// flag), to find a literal cut off at the end of unfinished text.
    by_first: Vec<Vec<(Vec<u8>, bool)>>,
    max_literal: usize,
    /// For each word of [`VOCABULARY`]: whether it holds no match (decided once, when the
    /// scanner is built).
    clean_words: Vec<bool>,
    /// `[[dlp.allow]]`: matches these exempt are dropped as they are found.
    allow: Vec<Allow>,
    /// The shortest match any detector can make.
    min_len: usize,
    /// Whether some detector anchors to lines.
    line_anchored: bool,
}

struct FindCx<'a> {
    hay: &'a [u8],
    fin: bool,
    out: &'a mut Vec<Match>,
    hold: usize,
    ends: Vec<usize>,
}

/// `[A-Za-z0-9_]`, by table: candidates ask it of the byte before them, in branchy code.
static WORD_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    t
};

#[inline]
pub(crate) fn is_word(b: u8) -> bool {
    WORD_BYTES[usize::from(b)]
}

#[inline]
fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

impl Scanner {
    pub(crate) fn new(detectors: Vec<Arc<Detector>>) -> Scanner {
        let mut lits = Vec::new();
        let mut kws = Vec::new();
        let mut email = None;
        let mut numeric = Vec::new();
        let mut iban = None;
        let mut bytes = Vec::new();
        let mut by_first: Vec<Vec<(Vec<u8>, bool)>> = vec![Vec::new(); 256];
        let mut max_literal = 0;
        for (i, d) in detectors.iter().enumerate() {
            match &d.trigger {
                Trigger::Literals(ls) => {
                    for l in ls {
                        lits.push((l.clone(), i));
                        max_literal = max_literal.max(l.len());
                        by_first[usize::from(l[0])].push((l.clone(), false));
                    }
                }
                Trigger::Keywords(ls) => {
                    for l in ls {
                        kws.push((l.clone(), i));
                        max_literal = max_literal.max(l.len());
                        let low = l.to_ascii_lowercase();
                        by_first[usize::from(low[0])].push((low.clone(), true));
                        by_first[usize::from(low[0].to_ascii_uppercase())].push((low, true));
                    }
                }
                Trigger::Email => email = email.or(Some(i)),
                Trigger::Numeric(shape) => numeric.push((i, *shape)),
                Trigger::Iban => iban = iban.or(Some(i)),
                Trigger::Bytes(set) => bytes.push((i, set.clone())),
            }
        }
        let (words, rest) = WordIndex::build(&lits, |i| detectors[i].dfa());
        let mut sc = Scanner {
            words,
            literals: LiteralSet::build(&rest, false),
            keywords: LiteralSet::build(&kws, true),
            detectors,
            email,
            numeric_table: NumericTable::new(&numeric),
            numeric,
            iban,
            bytes,
            by_first,
            max_literal,
            clean_words: Vec::new(),
            min_len: 0,
            allow: Vec::new(),
            line_anchored: false,
        };
        sc.min_len = sc.detectors.iter().map(|d| d.min_len).min().unwrap_or(0);
        sc.line_anchored = sc.detectors.iter().any(|d| d.line_anchored);
        let mut ms = Vec::new();
        sc.clean_words = VOCABULARY
            .iter()
            .map(|w| {
                ms.clear();
                sc.find(w.as_bytes(), 0, true, &mut ms);
                ms.is_empty()
            })
            .collect();
        sc
    }

    /// The scanner with allow rules: a match one of them exempts is not reported. (Allow rules
    /// only remove matches, so the clean vocabulary stays clean.)
    pub(crate) fn with_allow(mut self, allow: Vec<Allow>) -> Scanner {
        self.allow = allow;
        self
    }

    /// Whether `text`, scanned whole, is known to hold no match: it is a word of the common
    /// vocabulary that this scanner found clean when it was built.
    #[inline]
    pub(crate) fn is_known_clean(&self, text: &[u8]) -> bool {
        if text.len() < self.min_len {
            // Too short to hold any detector's match.
            return true;
        }
        if text.len() > 25 {
            return false;
        }
        VOCABULARY
            .binary_search_by(|w| w.as_bytes().cmp(text))
            .is_ok_and(|i| self.clean_words.get(i).copied().unwrap_or(false))
    }

    /// The detectors' names, in priority order (a [`Match::detector`] indexes this).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.detectors.iter().map(|d| d.name.as_str())
    }

    pub fn name(&self, detector: usize) -> &str {
        &self.detectors[detector].name
    }

    pub(crate) fn detector(&self, i: usize) -> &Detector {
        &self.detectors[i]
    }

    pub fn len(&self) -> usize {
        self.detectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    /// Every match in `text`, in no particular order and possibly overlapping (each detector
    /// reports at most one match per start: its longest valid one).
    pub fn find_all(&self, text: &[u8]) -> Vec<Match> {
        let mut out = Vec::new();
        self.find(text, 0, true, &mut out);
        out
    }

    /// Appends the decided matches starting at or after `from` to `out`. Bytes before `from`
    /// are context only (look-behind). With `fin` false more text may follow: the returned
    /// position is the start of the earliest candidate that the next bytes could still change
    /// (`hay.len()` when there is none); matches at or after it are not reported.
    pub(crate) fn find(&self, hay: &[u8], from: usize, fin: bool, out: &mut Vec<Match>) -> usize {
        let hold = self.find_unexempted(hay, from, fin, out);
        if !self.allow.is_empty() {
            // Decided from the match's own bytes: streamed and whole texts agree.
            out.retain(|m| {
                !self
                    .allow
                    .iter()
                    .any(|a| a.exempts(m.detector, &hay[m.start..m.end]))
            });
        }
        hold
    }

    /// Whether `text`, scanned whole, holds any match, allow rules not applied. `out` is
    /// scratch space.
    pub(crate) fn any_match(&self, text: &[u8], out: &mut Vec<Match>) -> bool {
        out.clear();
        self.find_unexempted(text, 0, true, out);
        !out.is_empty()
    }

    /// Whether some detector anchors to lines (`(?m)^`): it reads a text's edges unlike any
    /// other byte, so a text found inside a larger one may match differently.
    pub(crate) fn anchors_to_lines(&self) -> bool {
        self.line_anchored
    }

    /// [`Scanner::find`] before allow rules apply.
    fn find_unexempted(&self, hay: &[u8], from: usize, fin: bool, out: &mut Vec<Match>) -> usize {
        let mut cx = FindCx {
            hay,
            fin,
            out,
            hold: usize::MAX,
            ends: Vec::new(),
        };
        if let Some(lits) = &self.literals {
            lits.each(hay, from, |p, ds| {
                for &d in ds {
                    self.try_at(d, p, &mut cx);
                }
            });
        }
        if let Some(kws) = &self.keywords {
            kws.each(hay, from, |p, ds| {
                for &d in ds {
                    self.try_at(d, p, &mut cx);
                }
            });
        }
        if self.has_block_triggers() {
            self.find_in_blocks(from, &mut cx);
        }
        for (d, set) in &self.bytes {
            for p in from..hay.len() {
                if set[usize::from(hay[p])] {
                    self.try_at(*d, p, &mut cx);
                }
            }
        }
        let hold = cx.hold;
        if hold != usize::MAX {
            out.retain(|m| m.start < hold);
            hold
        } else {
            hay.len()
        }
    }

    fn email_at(&self, e: usize, at: usize, from: usize, cx: &mut FindCx<'_>) {
        let hay = cx.hay;
        let mut s = at;
        while s > 0 && at - s < EMAIL_LOCAL_MAX && is_local(hay[s - 1]) {
            s -= 1;
        }
        while s < at && hay[s] == b'.' {
            s += 1;
        }
        if s < at && s >= from {
            self.try_at(e, s, cx);
        }
    }

    #[inline]
    fn try_at(&self, d: usize, s: usize, cx: &mut FindCx<'_>) {
        let det = &self.detectors[d];
        cx.ends.clear();
        if !walk(det, cx.hay, s, cx.fin, &mut cx.ends) {
            cx.hold = cx.hold.min(s);
            return;
        }
        for &e in cx.ends.iter().rev() {
            let verdict = match det.validator {
                Some(v) => v(cx.hay, s, e),
                None => Check::Accept,
            };
            match verdict {
                Check::Accept => {
                    cx.out.push(Match {
                        detector: d,
                        start: s,
                        end: e,
                    });
                    return;
                }
                Check::Reject => continue,
                Check::Poison => return,
            }
        }
    }

    /// The earliest position at or after `from` where the end of `hay` could be the beginning
    /// of a trigger that the next bytes complete (`hay.len()` when there is none): a partial
    /// literal, a trailing e-mail local part, a `+`/`(` before a number, an IBAN's country.
    pub(crate) fn partial_tail(&self, hay: &[u8], from: usize) -> usize {
        let n = hay.len();
        let mut p = n;
        if self.max_literal > 1 {
            let lo = from.max(n.saturating_sub(self.max_literal - 1));
            'pos: for k in lo..n {
                let tail = &hay[k..];
                for (lit, ci) in &self.by_first[usize::from(tail[0])] {
                    // A literal whole at the very end counts too: the word index needs the
                    // three bytes from a word start to find it.
                    let cut = lit.len() >= tail.len()
                        && if *ci {
                            lit[..tail.len()].eq_ignore_ascii_case(tail)
                        } else {
                            lit.starts_with(tail)
                        };
                    if cut {
                        p = k;
                        break 'pos;
                    }
                }
            }
        }
        if self.email.is_some() {
            let mut k = n;
            while k > from && n - k < EMAIL_LOCAL_MAX && is_local(hay[k - 1]) {
                k -= 1;
            }
            p = p.min(k);
        }
        if !self.numeric.is_empty() && n > from && matches!(hay[n - 1], b'+' | b'(') {
            p = p.min(n - 1);
        }
        if self.iban.is_some() {
            let mut k = n;
            while k > from && n - k < 3 && hay[k - 1].is_ascii_uppercase() {
                k -= 1;
            }
            let run = n - k;
            if (1..=2).contains(&run) && (k == 0 || !is_word(hay[k - 1])) {
                p = p.min(k);
            }
        }
        p
    }
}

/// Runs a detector's anchored DFA from `s`, collecting the ends of its matches (all of them
/// when a validator will choose, else only the longest). Returns false when the outcome is
/// undecided: more text could extend or complete a match (only when `fin` is false).
#[inline]
fn walk(det: &Detector, hay: &[u8], s: usize, fin: bool, ends: &mut Vec<usize>) -> bool {
    let dfa = &det.dfa;
    let all = det.validator.is_some();
    let start = match &det.starts {
        Some(t) => Ok(t[if s == 0 { 256 } else { usize::from(hay[s - 1]) }]),
        None => dfa.start_state_forward(&Input::new(hay).range(s..).anchored(Anchored::Yes)),
    };
    let Ok(mut sid) = start else {
        return true;
    };
    let found = |at: usize, ends: &mut Vec<usize>| {
        if !all {
            ends.clear();
        }
        ends.push(at);
    };
    let limit = hay.len().min(s.saturating_add(MAX_MATCH_BYTES));
    // Over a slice: no bounds check per byte.
    for (i, &b) in (s..).zip(&hay[s..limit]) {
        sid = dfa.next_state(sid, b);
        if dfa.is_special_state(sid) {
            if dfa.is_match_state(sid) {
                found(i, ends);
            } else if dfa.is_dead_state(sid) || dfa.is_quit_state(sid) {
                return true;
            }
        }
    }
    if limit < hay.len() {
        // The length cap: decided with what was seen.
        return true;
    }
    if !fin {
        return false;
    }
    sid = dfa.next_eoi_state(sid);
    if dfa.is_match_state(sid) {
        found(hay.len(), ends);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_compiles() {
        assert_eq!(builtins().len(), BUILTINS.len());
    }
}
