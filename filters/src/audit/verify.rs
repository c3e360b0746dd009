//! `sluice audit verify`: checks the hash chain of one or more audit log files.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::record::{chain_hash, is_hash, GENESIS_PREV};

/// Longer lines are not records Sluice wrote (client strings in records are bounded).
const MAX_LINE_BYTES: usize = 1 << 20;

/// At most this many warnings are kept in a report (the count of the rest is).
const MAX_WARNINGS: usize = 100;

/// Where the chain of the first file must start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ChainStart {
    /// The first record's `prev` is 64 zeros: the files hold the whole log.
    #[default]
    Genesis,
    /// The first record continues after this hash: the last hash an earlier verification
    /// reported (for a log whose older rotated files were archived).
    After(String),
    /// Accept whatever the first record continues from; everything after it is still checked.
    Any,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub start: ChainStart,
}

/// What is wrong with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The record's content does not match its `hash`: it was edited.
    HashMismatch,
    /// The record's `prev` is not the previous record's `hash`: a record was deleted, inserted
    /// or reordered (or the files are not in order).
    PrevMismatch,
    /// The first record does not start the chain: the records before it are missing.
    MissingHead,
    /// Valid JSON, but not a chained audit record (or an absurdly long line).
    NotARecord,
    /// Not JSON: a record torn by a crash mid-write. A warning, not an error.
    Torn,
    /// The file cannot be read.
    Unreadable,
}

/// A problem at one line of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based; 0 when the whole file is concerned.
    pub line: u64,
    pub problem: Problem,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.detail)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.detail)
        }
    }
}

/// The outcome of [`verify`]. Its `Display` is what `sluice audit verify` prints; its
/// [`VerifyReport::exit_code`] is the command's exit status.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Records whose hash and link verified (before the first error, if any).
    pub records: u64,
    /// The `hash` of the last verified record (the chain's head): keep it somewhere else to
    /// detect later truncation, or pass it as [`ChainStart::After`] to verify newer files alone.
    pub last_hash: Option<String>,
    /// Torn lines, in order (at most 100 kept).
    pub warnings: Vec<Finding>,
    /// Warnings beyond those kept.
    pub more_warnings: u64,
    /// The first bad line; `None` when the chain is intact.
    pub error: Option<Finding>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    /// 0 when intact (torn lines are warnings), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.is_ok() {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.more_warnings > 0 {
            writeln!(f, "warning: … and {} more torn lines", self.more_warnings)?;
        }
        let plural = if self.records == 1 { "" } else { "s" };
        match &self.error {
            Some(e) => write!(
                f,
                "error: {e}\n({} record{plural} verified before it)",
                self.records
            ),
            None => {
                write!(f, "ok: {} record{plural}", self.records)?;
                if let Some(h) = &self.last_hash {
                    write!(f, ", last hash {h}")?;
                }
                Ok(())
            }
        }
    }
}

/// Verifies `files`, in the order given, as one chain whose first record starts it (`prev` = 64
/// zeros). See [`verify_with`].
pub fn verify(files: &[PathBuf]) -> VerifyReport {
    verify_with(files, &VerifyOptions::default())
}

/// Verifies `files`, in the order given (oldest rotated file first, the active file last), as
/// one hash chain.
///
/// For each line: it must be a JSON object with a 64-hex `prev` and `hash`; `hash` must equal
/// `sha256_hex(prev + canonical)` where `canonical` is the object without `hash`, re-serialized
/// with no whitespace and its keys in their order; `prev` must equal the previous record's
/// `hash` (or start the chain, per `opts.start`). The first line that fails ends the check.
///
/// A line that is not JSON at all is a record torn by a crash mid-write: it is reported as a
/// warning and skipped, and the chain must continue over it (the writer resumes after the last
/// complete record). That covers the torn last line of an `interval` log after a crash.
pub fn verify_with(files: &[PathBuf], opts: &VerifyOptions) -> VerifyReport {
    let mut v = Verifier {
        head: match &opts.start {
            ChainStart::Genesis => Head::Expect(GENESIS_PREV.to_string()),
            ChainStart::After(h) => Head::Expect(h.to_ascii_lowercase()),
            ChainStart::Any => Head::Any,
        },
        first: true,
        prev_at: None,
        report: VerifyReport {
            records: 0,
            last_hash: None,
            warnings: Vec::new(),
            more_warnings: 0,
            error: None,
        },
    };
    for (i, file) in files.iter().enumerate() {
        let last_file = i + 1 == files.len();
        if let Err(e) = v.file(file, last_file) {
            v.report.error = Some(e);
            break;
        }
    }
    v.report
}

enum Head {
    /// The next record's `prev` must be this.
    Expect(String),
    /// The first record may continue from anything.
    Any,
}

struct Verifier {
    head: Head,
    /// No record seen yet.
    first: bool,
    /// Where the record the head came from is, for messages.
    prev_at: Option<(PathBuf, u64)>,
    report: VerifyReport,
}

impl Verifier {
    fn file(&mut self, path: &Path, last_file: bool) -> Result<(), Finding> {
        let finding = |line: u64, problem: Problem, detail: String| Finding {
            file: path.to_path_buf(),
            line,
            problem,
            detail,
        };
        let file = File::open(path)
            .map_err(|e| finding(0, Problem::Unreadable, format!("cannot open: {e}")))?;
        let mut reader = BufReader::with_capacity(64 << 10, file);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            let read = read_line(&mut reader, &mut buf)
                .map_err(|e| finding(n + 1, Problem::Unreadable, format!("cannot read: {e}")))?;
            let Some((terminated, too_long)) = read else {
                return Ok(());
            };
            n += 1;
            if too_long {
                return Err(finding(
                    n,
                    Problem::NotARecord,
                    format!(
                        "line longer than {} MiB: not an audit record",
                        MAX_LINE_BYTES >> 20
                    ),
                ));
            }
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&buf) else {
                let at_end = last_file && !terminated;
                self.warn(finding(
                    n,
                    Problem::Torn,
                    if at_end {
                        "torn last line (the writer stopped mid-write, e.g. a crash): not a \
                         record; the records before it verify"
                            .into()
                    } else {
                        "not JSON: a record torn by a crash (the writer resumed on the next \
                         line); skipped, the chain must continue over it"
                            .into()
                    },
                ));
                continue;
            };
            self.record(value, path, n)
                .map_err(|(p, d)| finding(n, p, d))?;
        }
    }

    fn record(
        &mut self,
        value: serde_json::Value,
        path: &Path,
        line: u64,
    ) -> Result<(), (Problem, String)> {
        let serde_json::Value::Object(mut obj) = value else {
            return Err((Problem::NotARecord, "not a JSON object".into()));
        };
        let hash = match obj.shift_remove("hash") {
            Some(serde_json::Value::String(h)) if is_hash(&h) => h,
            _ => {
                return Err((
                    Problem::NotARecord,
                    "no valid `hash` (64 lowercase hex digits): not a chained audit record".into(),
                ))
            }
        };
        let prev = match obj.get("prev") {
            Some(serde_json::Value::String(p)) if is_hash(p) => p.clone(),
            _ => {
                return Err((
                    Problem::NotARecord,
                    "no valid `prev` (64 lowercase hex digits): not a chained audit record".into(),
                ))
            }
        };
        let canonical = serde_json::to_vec(&obj)
            .map_err(|e| (Problem::NotARecord, format!("cannot re-serialize: {e}")))?;
        if chain_hash(&prev, &canonical) != hash {
            return Err((
                Problem::HashMismatch,
                "hash mismatch: the record's content does not match its hash (it was edited \
                 after it was written)"
                    .into(),
            ));
        }
        match (&self.head, self.first) {
            (Head::Any, _) => {}
            (Head::Expect(expected), true) if *expected != prev => {
                let why = if expected == GENESIS_PREV {
                    "missing head: the first record does not start the chain (its prev is not \
                     64 zeros): the records before it are missing — pass the earlier rotated \
                     files first, in order"
                        .to_string()
                } else {
                    format!(
                        "missing head: the first record does not continue from {expected}: the \
                         records between are missing"
                    )
                };
                return Err((Problem::MissingHead, why));
            }
            (Head::Expect(expected), false) if *expected != prev => {
                let before = match &self.prev_at {
                    Some((f, l)) if f == path => format!("line {l}"),
                    Some((f, l)) => format!("{}:{l}", f.display()),
                    None => "the chain start".into(),
                };
                return Err((
                    Problem::PrevMismatch,
                    format!(
                        "prev mismatch: prev is not the hash of the record before it ({before}): \
                         a record was deleted, inserted or reordered here (or the files are not \
                         in order)"
                    ),
                ));
            }
            _ => {}
        }
        self.first = false;
        self.prev_at = Some((path.to_path_buf(), line));
        self.report.records += 1;
        self.report.last_hash = Some(hash.clone());
        self.head = Head::Expect(hash);
        Ok(())
    }

    fn warn(&mut self, f: Finding) {
        if self.report.warnings.len() < MAX_WARNINGS {
            self.report.warnings.push(f);
        } else {
            self.report.more_warnings += 1;
        }
    }
}

/// Reads one line into `buf` (without its newline), keeping at most [`MAX_LINE_BYTES`].
/// Returns `None` at end of file, else whether the line ended with a newline and whether it was
/// cut.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<(bool, bool)>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some((false, too_long)));
        }
        any = true;
        let (chunk, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], Some(i)),
            None => (avail, None),
        };
        if buf.len() + chunk.len() > MAX_LINE_BYTES {
            too_long = true;
        } else {
            buf.extend_from_slice(chunk);
        }
        match found {
            Some(i) => {
                r.consume(i + 1);
                return Ok(Some((true, too_long)));
            }
            None => {
                let len = avail.len();
                r.consume(len);
            }
        }
    }
}
