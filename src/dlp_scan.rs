//! `sluice dlp scan [-c FILE] [--show] [FILE...]`: runs the gateway's DLP scanner over files
//! (or standard input) and prints each finding as `PATH:LINE:COLUMN: DETECTOR`, so operators
//! can tune `[dlp]` packs, rules and allow rules on their own data before turning them on.
//!
//! The matched text is never printed unless `--show` is given: the point of the tool is to
//! find secrets, and its output lands in terminals, CI logs and tickets. Exit status: 0 when
//! nothing was found, 1 when something was, 2 on a usage, config or read error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sluice::filters::dlp::{DlpSettings, Scanner};

/// Where a finding is, and what found it.
struct Finding<'a> {
    line: usize,
    column: usize,
    detector: &'a str,
    text: &'a [u8],
}

/// The `[dlp]` settings of `config`, or the built-in defaults (both packs) without one.
///
/// Only the `[dlp]` section is read (and checked as `sluice check` would): the gateway's own
/// config file works, and so does a file holding nothing else, on a laptop where the
/// upstreams' keys and addresses are not at hand.
fn settings(config: Option<&Path>) -> Result<DlpSettings, String> {
    let Some(path) = config else {
        return Ok(DlpSettings::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let Some(dlp) = table.get("dlp") else {
        return Ok(DlpSettings::default());
    };
    dlp.clone()
        .try_into()
        .map_err(|e: toml::de::Error| format!("{}: dlp: {}", path.display(), e.message()))
}

/// Every match in `text`, by position, with 1-based lines and columns (columns count
/// characters, as editors do).
fn findings<'a>(sc: &'a Scanner, text: &'a [u8]) -> Vec<Finding<'a>> {
    let mut ms = sc.find_all(text);
    ms.sort_by_key(|m| (m.start, m.detector, m.end));
    ms.dedup();
    let (mut line, mut line_start, mut pos) = (1, 0, 0);
    ms.iter()
        .map(|m| {
            for (i, &b) in text[pos..m.start].iter().enumerate() {
                if b == b'\n' {
                    line += 1;
                    line_start = pos + i + 1;
                }
            }
            pos = m.start;
            let column = 1 + text[line_start..m.start]
                .iter()
                .filter(|&&b| b & 0xC0 != 0x80)
                .count();
            Finding {
                line,
                column,
                detector: sc.name(m.detector),
                text: &text[m.start..m.end],
            }
        })
        .collect()
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path)
    }
}

/// Runs the command; see the module docs.
pub fn run(config: Option<&Path>, show: bool, files: &[PathBuf]) -> ExitCode {
    let scanner = match settings(config).and_then(|s| {
        Scanner::from_settings(&s).map_err(|e| {
            let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
            lines.join("\n")
        })
    }) {
        Ok(sc) => sc,
        Err(e) => {
            eprintln!("sluice dlp scan: {e}");
            return ExitCode::from(2);
        }
    };
    let stdin = [PathBuf::from("-")];
    let files = if files.is_empty() { &stdin[..] } else { files };
    let (mut found, mut failed) = (0usize, false);
    let mut out = std::io::stdout().lock();
    for path in files {
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("sluice dlp scan: {}: {e}", path.display());
                failed = true;
                continue;
            }
        };
        let name = if path == Path::new("-") {
            "<stdin>".to_string()
        } else {
            path.display().to_string()
        };
        for f in findings(&scanner, &text) {
            found += 1;
            let shown = if show {
                format!(": {}", String::from_utf8_lossy(f.text))
            } else {
                String::new()
            };
            // A closed pipe (`| head`) ends the output, not the scan's verdict.
            let _ = writeln!(out, "{name}:{}:{}: {}{shown}", f.line, f.column, f.detector);
        }
    }
    let _ = out.flush();
    if failed {
        ExitCode::from(2)
    } else if found > 0 {
        eprintln!("{found} finding(s)");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
