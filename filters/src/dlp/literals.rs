//! The trigger literals: the literal prefixes read off a detector's DFA, and the Aho-Corasick
//! automata that find where any of them starts.

use std::collections::HashSet;

use aho_corasick::{packed, AhoCorasick, AhoCorasickKind, MatchKind as AcMatchKind};
use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::{primitives::StateID, start};
use regex_automata::Anchored;

/// The look-behind contexts a start state can be computed for; the union over them covers
/// every position.
const LOOK_BEHINDS: [Option<u8>; 5] = [None, Some(b' '), Some(b'a'), Some(b'\n'), Some(b'\r')];

fn start_states(dfa: &dense::DFA<Vec<u32>>) -> Vec<StateID> {
    LOOK_BEHINDS
        .iter()
        .filter_map(|lb| {
            dfa.start_state(
                &start::Config::new()
                    .anchored(Anchored::Yes)
                    .look_behind(*lb),
            )
            .ok()
        })
        .collect()
}

/// The bytes a match can start with.
pub(crate) fn first_bytes(dfa: &dense::DFA<Vec<u32>>) -> Box<[bool; 256]> {
    let mut set = Box::new([false; 256]);
    for sid in start_states(dfa) {
        for b in 0..=255u8 {
            if !dfa.is_dead_state(dfa.next_state(sid, b)) {
                set[usize::from(b)] = true;
            }
        }
    }
    set
}

/// Literal prefixes every match starts with, read off the DFA: all byte strings of length
/// `depth` (or shorter, when a match can end sooner) its start states can read without dying.
/// `None` when there are more than `max` of them or one is shorter than 3 bytes.
pub(crate) fn literal_prefixes(
    dfa: &dense::DFA<Vec<u32>>,
    depth: usize,
    max: usize,
) -> Option<Vec<Vec<u8>>> {
    fn walk(
        dfa: &dense::DFA<Vec<u32>>,
        sid: StateID,
        prefix: &mut Vec<u8>,
        depth: usize,
        max: usize,
        out: &mut HashSet<Vec<u8>>,
    ) -> bool {
        if prefix.len() == depth {
            out.insert(prefix.clone());
            return out.len() <= max;
        }
        for b in 0..=255u8 {
            let next = dfa.next_state(sid, b);
            if dfa.is_dead_state(next) || dfa.is_quit_state(next) {
                continue;
            }
            if dfa.is_match_state(next) {
                // A match can end after `prefix`: it is the longest literal on this path.
                if prefix.len() < 3 {
                    return false;
                }
                out.insert(prefix.clone());
                if out.len() > max {
                    return false;
                }
                continue;
            }
            prefix.push(b);
            let ok = walk(dfa, next, prefix, depth, max, out);
            prefix.pop();
            if !ok {
                return false;
            }
        }
        true
    }
    let mut out = HashSet::new();
    for sid in start_states(dfa) {
        if !walk(dfa, sid, &mut Vec::new(), depth, max, &mut out) {
            return None;
        }
    }
    // A literal that extends another adds nothing: the shorter one finds the same starts.
    let all: Vec<Vec<u8>> = out.into_iter().collect();
    let mut kept: Vec<Vec<u8>> = all
        .iter()
        .filter(|l| !all.iter().any(|o| o.len() < l.len() && l.starts_with(o)))
        .cloned()
        .collect();
    kept.sort();
    if kept.is_empty() || kept.iter().any(|l| l.len() < 3) {
        return None;
    }
    Some(kept)
}

/// Whether no match can start with `first` right after a word byte: the pattern begins with
/// `\b` there, so every match starting with that byte starts a word.
pub(crate) fn needs_word_start(dfa: &dense::DFA<Vec<u32>>, first: u8) -> bool {
    let after_word = start::Config::new()
        .anchored(Anchored::Yes)
        .look_behind(Some(b'a'));
    dfa.start_state(&after_word)
        .is_ok_and(|sid| dfa.is_dead_state(dfa.next_state(sid, first)))
}

/// The bytes that can follow `prefix` in a match (from any start context), and whether a match
/// can end right after it.
pub(crate) fn next_bytes(dfa: &dense::DFA<Vec<u32>>, prefix: &[u8]) -> (Box<[bool; 256]>, bool) {
    let mut set = Box::new([false; 256]);
    let mut can_end = false;
    for mut sid in start_states(dfa) {
        for &b in prefix {
            sid = dfa.next_state(sid, b);
        }
        if dfa.is_dead_state(sid) || dfa.is_quit_state(sid) {
            continue;
        }
        // Matches are reported one byte late: a match ends after `prefix` when the state after
        // the next byte (or after the end of the text) is a match state.
        can_end |= dfa.is_match_state(dfa.next_eoi_state(sid));
        for b in 0..=255u8 {
            let next = dfa.next_state(sid, b);
            can_end |= dfa.is_match_state(next);
            if !dfa.is_dead_state(next) && !dfa.is_quit_state(next) {
                set[usize::from(b)] = true;
            }
        }
    }
    (set, can_end)
}

/// Aho-Corasick automata over trigger literals, and for each of their patterns the detectors
/// to try where it matches (those whose literal starts with it).
///
/// The literals are split into automata of at most [`GROUP`] patterns: Teddy, the SIMD
/// prefilter inside each, puts several patterns in each of its 8 buckets when given more, and
/// its false candidates then cost far more than one extra pass (measured: two passes over 16
/// literals each run several times faster than one pass over the same 32).
pub(super) struct LiteralSet {
    groups: Vec<(Finder, Vec<Vec<usize>>)>,
    /// Every literal in one automaton without a prefilter, for short texts (most JSON
    /// strings): one table-driven pass costs less there than a call per group.
    all: Option<(Finder, Vec<Vec<usize>>)>,
}

/// One group's searcher: Teddy itself (aho-corasick's packed searcher, which confirms its own
/// candidates) where it can be built, else an automaton.
enum Finder {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Finder {
    #[inline]
    fn find(&self, hay: &[u8], from: usize) -> Option<(usize, usize)> {
        let m = match self {
            Finder::Packed(s) => s.find_in(hay, aho_corasick::Span::from(from..hay.len()))?,
            Finder::Automaton(ac) => {
                ac.find(aho_corasick::Input::new(hay).span(from..hay.len()))?
            }
        };
        Some((m.start(), m.pattern().as_usize()))
    }
}

const GROUP: usize = 16;

/// Texts shorter than this take the one-automaton pass ([`LiteralSet::all`]). Measured with
/// callgrind over the default packs (instructions per `find_all` of prose and of technical
/// text): the one automaton costs about 1.0 k + 23 per byte, the Teddy groups 1.2 k + 9 per
/// byte, so they cross near 64 bytes (40 bytes: 1.7 k against 1.9 k; 100: 2.8 k against 2.5 k).
const SHORT_TEXT: usize = 64;

impl LiteralSet {
    pub(super) fn build(pairs: &[(Vec<u8>, usize)], case_insensitive: bool) -> Option<LiteralSet> {
        if pairs.is_empty() {
            return None;
        }
        let norm = |l: &[u8]| {
            if case_insensitive {
                l.to_ascii_lowercase()
            } else {
                l.to_vec()
            }
        };
        let mut lits: Vec<Vec<u8>> = pairs.iter().map(|(l, _)| norm(l)).collect();
        lits.sort();
        lits.dedup();
        // A literal that extends another (`sk-ant-` after `sk-`) needs no slot of its own: the
        // shorter one finds the same places, and the DFAs tell the detectors apart.
        let all = lits.clone();
        lits.retain(|l| !all.iter().any(|o| o.len() < l.len() && l.starts_with(o)));
        // Teddy fingerprints as many leading bytes as its group's shortest literal has (up to
        // 3): two-byte literals get a group of their own, so that they do not make every other
        // literal's group report twice-as-loose candidates.
        let every = lits.clone();
        let (short, long): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            lits.into_iter().partition(|l| l.len() < 3);
        let detectors_of = |chunk: &[Vec<u8>]| -> Vec<Vec<usize>> {
            chunk
                .iter()
                .map(|lit| {
                    let mut ds: Vec<usize> = pairs
                        .iter()
                        .filter(|(l, _)| norm(l).starts_with(lit))
                        .map(|&(_, d)| d)
                        .collect();
                    ds.sort_unstable();
                    ds.dedup();
                    ds
                })
                .collect()
        };
        let automaton = |chunk: &[Vec<u8>], prefilter: bool| {
            AhoCorasick::builder()
                .match_kind(AcMatchKind::LeftmostLongest)
                .ascii_case_insensitive(case_insensitive)
                .kind(Some(AhoCorasickKind::DFA))
                .prefilter(prefilter)
                .build(chunk)
                .ok()
        };
        let group = |chunk: &[Vec<u8>]| {
            let packed = (!case_insensitive)
                .then(|| {
                    packed::Config::new()
                        .match_kind(packed::MatchKind::LeftmostLongest)
                        .builder()
                        .extend(chunk)
                        .build()
                })
                .flatten();
            match packed {
                Some(s) => Some(Finder::Packed(s)),
                None => automaton(chunk, true).map(Finder::Automaton),
            }
        };
        let mut groups = Vec::new();
        for chunk in long.chunks(GROUP).chain(short.chunks(GROUP)) {
            groups.push((group(chunk)?, detectors_of(chunk)));
        }
        // One group already is one pass: the single automaton would add nothing.
        let all = if groups.len() > 1 {
            Some((
                Finder::Automaton(automaton(&every, false)?),
                detectors_of(&every),
            ))
        } else {
            None
        };
        Some(LiteralSet { groups, all })
    }

    /// How many passes a long text takes.
    #[cfg(test)]
    pub(super) fn passes(&self) -> usize {
        self.groups.len()
    }

    /// Every position at or after `from` where some literal starts, with its detectors (not in
    /// position order across groups).
    #[inline]
    pub(super) fn each(&self, hay: &[u8], from: usize, mut f: impl FnMut(usize, &[usize])) {
        // No two literals start at one position (a literal that extends another was dropped),
        // so one automaton over all of them reports exactly what the groups do together.
        let short = hay.len().saturating_sub(from) < SHORT_TEXT;
        let one = self.all.as_ref().filter(|_| short);
        for (finder, detectors) in one
            .into_iter()
            .chain(self.groups.iter().filter(|_| !short || self.all.is_none()))
        {
            let mut pos = from;
            while pos < hay.len() {
                let Some((start, pattern)) = finder.find(hay, pos) else {
                    break;
                };
                f(start, &detectors[pattern]);
                pos = start + 1;
            }
        }
    }
}
