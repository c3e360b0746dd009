//! [`Dlp`]: `[dlp]` built — its detectors and allow rules compiled once per config load, and
//! shared by everything that scans with them (the `dlp` filter, the [`FieldScrubber`]).

use std::cell::Cell;
use std::sync::Arc;

use super::detectors::{Pack, BUILTINS};
use super::scanner::{builtins, Detector, Scanner};
use super::settings::Compiled;
use super::{Action, Direction, DlpSettings, FieldScrubber};

/// `[dlp]` as [`crate::config::Section::build`] makes it.
pub struct Dlp {
    scanner: Arc<Scanner>,
    /// Each detector's action, per [`Direction`].
    actions: [Vec<Action>; 2],
    max_scan_bytes: usize,
    scrubber: Arc<FieldScrubber>,
}

impl Dlp {
    pub(super) fn new(settings: &DlpSettings, c: Compiled) -> Dlp {
        let scanner = Arc::new(Scanner::new(c.detectors.clone()).with_allow(c.allow.clone()));
        let actions = [
            settings.actions(&scanner, Direction::Request),
            settings.actions(&scanner, Direction::Response),
        ];
        let scrubber = if c.packs.contains(&Pack::Secrets) {
            FieldScrubber::over(scanner.clone())
        } else {
            FieldScrubber::over(Arc::new(with_secrets(&scanner, c)))
        };
        Dlp {
            scanner,
            actions,
            max_scan_bytes: settings.max_scan_bytes,
            scrubber: Arc::new(scrubber),
        }
    }

    pub fn scanner(&self) -> &Arc<Scanner> {
        &self.scanner
    }

    /// Each detector's action for `dir` (indexed like the scanner's detectors).
    pub fn actions(&self, dir: Direction) -> &[Action] {
        match dir {
            Direction::Request => &self.actions[0],
            Direction::Response => &self.actions[1],
        }
    }

    pub fn max_scan_bytes(&self) -> usize {
        self.max_scan_bytes
    }

    /// What redacts the fields a client chose before anything records them.
    pub fn scrubber(&self) -> &Arc<FieldScrubber> {
        &self.scrubber
    }
}

impl std::fmt::Debug for Dlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlp")
            .field("detectors", &self.scanner.names().collect::<Vec<_>>())
            .field("max_scan_bytes", &self.max_scan_bytes)
            .finish_non_exhaustive()
    }
}

/// The scrubber's scanner when the packs leave `secrets` out: the configured detectors plus
/// the `secrets` built-ins (compiled once per process), the custom rules and allow rules as
/// compiled for the section — nothing is compiled again.
fn with_secrets(scanner: &Scanner, c: Compiled) -> Scanner {
    let n_builtin = BUILTINS
        .iter()
        .filter(|b| c.packs.contains(&b.pack))
        .count();
    let mut detectors: Vec<Arc<Detector>> = builtins()
        .iter()
        .zip(BUILTINS.iter())
        .filter(|(_, b)| b.pack == Pack::Secrets || c.packs.contains(&b.pack))
        .map(|(d, _)| d.clone())
        .collect();
    detectors.extend(c.detectors[n_builtin..].iter().cloned());
    let names: Vec<String> = detectors.iter().map(|d| d.name.clone()).collect();
    let allow = c
        .allow
        .iter()
        .map(|a| a.reindexed(|d| names.iter().position(|n| n == scanner.name(d))))
        .collect();
    Scanner::new(detectors).with_allow(allow)
}

thread_local! {
    static COMPILES: Cell<u64> = const { Cell::new(0) };
}

pub(super) fn count_compile() {
    COMPILES.with(|c| c.set(c.get() + 1));
}

/// How many times `[dlp]` settings were compiled on this thread: lets a test show that one
/// config load compiles them once. A thread's own count, so tests running alongside do not
/// disturb it.
#[doc(hidden)]
pub fn compiles_on_this_thread() -> u64 {
    COMPILES.with(Cell::get)
}
