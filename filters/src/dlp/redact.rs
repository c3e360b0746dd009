//! From matches to text: which matches apply, what replaces them, and how far a stream can be
//! released.
//!
//! One function, [`step`], serves whole texts and streams alike, so the two cannot disagree:
//!
//! - `monitor` matches are recorded and change nothing (they never hide another match);
//! - `redact` and `mask` matches are resolved leftmost first; at one start the stronger action
//!   (then the higher-priority detector) wins; a later match overlapping an applied one keeps
//!   only its part past the applied one's end, so nothing of either is left in clear;
//! - the first `block` match ends the text: what comes before it is kept (with its other
//!   matches applied), the rest is withheld.

use super::scanner::{Match, Scanner};
use super::Action;

/// What one step decided.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The text released for `[from, upto)`, when it differs from the input bytes.
    pub text: Option<Vec<u8>>,
    /// How far the input is decided: everything before is released (or withheld by a block).
    pub upto: usize,
    /// The detector of the `block` match that ended the text.
    pub blocked: Option<usize>,
    /// One entry (the detector) per recorded match, with its action.
    pub found: Vec<(usize, Action)>,
}

fn rank(a: Action) -> u8 {
    match a {
        Action::Block => 0,
        Action::Redact => 1,
        Action::Mask => 2,
        Action::Monitor => 3,
    }
}

/// Decides `hay[from..]` (bytes before `from` are look-behind context). With `fin` false the
/// text may continue, and the step stops before anything the next bytes could still change.
/// `actions[d]` is detector `d`'s action in this direction; `ms` is scratch space. With
/// `stop_at_block` false a `block` match is only recorded (and reported), not applied.
pub(crate) fn step(
    sc: &Scanner,
    hay: &[u8],
    from: usize,
    fin: bool,
    actions: &[Action],
    stop_at_block: bool,
    ms: &mut Vec<Match>,
) -> Outcome {
    ms.clear();
    let hold = sc.find(hay, from, fin, ms);
    let mut p = if fin {
        hay.len()
    } else {
        hold.min(sc.partial_tail(hay, from))
    };
    if ms.is_empty() {
        return Outcome {
            upto: p,
            ..Outcome::default()
        };
    }
    // Each trigger pass reports in position order: a stable (run-merging) sort is near linear.
    ms.sort_by_key(|m| (m.start, rank(actions[m.detector]), m.detector));
    let edits = |m: &Match| matches!(actions[m.detector], Action::Redact | Action::Mask);
    // A replaced match is released whole or not at all: pull `p` back before any that it cuts.
    loop {
        let cut = ms
            .iter()
            .filter(|m| edits(m) && m.start < p && m.end > p)
            .map(|m| m.start)
            .min();
        match cut {
            Some(s) => p = s,
            None => break,
        }
    }
    let first_block = ms
        .iter()
        .filter(|m| actions[m.detector] == Action::Block && m.start < p)
        .min_by_key(|m| m.start)
        .copied();
    let block = first_block.filter(|_| stop_at_block);
    let upto = block.map_or(p, |b| b.start);

    let mut out = Vec::with_capacity(upto.saturating_sub(from) + 64);
    let mut found = Vec::with_capacity(ms.len());
    let mut changed = block.is_some();
    let mut pos = from;
    let mut last_end = from;
    for m in ms.iter().filter(|m| m.start < upto) {
        let action = actions[m.detector];
        if !edits(m) {
            if action == Action::Monitor || (action == Action::Block && block.is_none()) {
                found.push((m.detector, action));
            }
            continue;
        }
        if m.end <= last_end {
            continue;
        }
        let s = m.start.max(last_end);
        out.extend_from_slice(&hay[pos..s]);
        render(&mut out, sc.name(m.detector), action, &hay[s..m.end]);
        pos = m.end;
        last_end = m.end;
        changed = true;
        found.push((m.detector, action));
    }
    if let Some(b) = block {
        found.push((b.detector, Action::Block));
    }
    let upto = upto.max(pos);
    if changed {
        out.extend_from_slice(&hay[pos..upto]);
    }
    Outcome {
        text: changed.then_some(out),
        upto: if block.is_some() { hay.len() } else { upto },
        blocked: first_block.map(|b| b.detector),
        found,
    }
}

/// Writes the replacement of a match.
fn render(out: &mut Vec<u8>, name: &str, action: Action, text: &[u8]) {
    match action {
        Action::Mask => {
            let s = String::from_utf8_lossy(text);
            let n = s.chars().count();
            // Keep the last 4 characters only when that leaves most of the value hidden.
            let keep = if n >= 8 { 4 } else { 0 };
            out.extend(std::iter::repeat_n(b'*', n - keep));
            let tail: String = s.chars().skip(n - keep).collect();
            out.extend_from_slice(tail.as_bytes());
        }
        _ => {
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(name.as_bytes());
            out.push(b']');
        }
    }
}

/// The result of scanning one whole text.
pub(crate) struct Whole {
    /// The new text, when something was replaced or withheld.
    pub text: Option<Vec<u8>>,
    pub found: Vec<(usize, Action)>,
}

/// Scans and rewrites a complete text.
pub(crate) fn whole(
    sc: &Scanner,
    text: &[u8],
    actions: &[Action],
    stop_at_block: bool,
    ms: &mut Vec<Match>,
) -> Whole {
    let o = step(sc, text, 0, true, actions, stop_at_block, ms);
    Whole {
        text: o.text,
        found: o.found,
    }
}
