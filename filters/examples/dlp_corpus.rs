//! The DLP precision report: scans every `.rs`, `.md`, `.toml` and `.json` file under the
//! given directories with the default packs and prints the findings per detector, per MB.
//!
//! Text that no one here wrote (the crates in `~/.cargo/registry/src` are hundreds of MB of
//! code, docs and test vectors) is the honest measure of false positives: almost none of it
//! holds a real secret or anyone's personal data, so nearly every finding is a false alarm.
//!
//! ```sh
//! cargo run --release -p sluice-filters --example dlp_corpus -- ~/.cargo/registry/src
//! cargo run --release -p sluice-filters --example dlp_corpus -- --show 20 ~/.cargo/registry/src
//! ```
//!
//! `--show N` prints up to N findings per detector with their file, line and surroundings (to
//! judge each one), `--detector NAME` only that detector's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_filters::dlp::{DlpSettings, Scanner};

const EXTENSIONS: [&str; 4] = ["rs", "md", "toml", "json"];

struct Options {
    roots: Vec<PathBuf>,
    show: usize,
    only: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        roots: Vec::new(),
        show: 0,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--show" => {
                let n = args.next().ok_or("--show needs a number")?;
                o.show = n.parse().map_err(|_| format!("--show {n}: not a number"))?;
            }
            "--detector" => o.only = Some(args.next().ok_or("--detector needs a name")?),
            _ => o.roots.push(PathBuf::from(a)),
        }
    }
    if o.roots.is_empty() {
        return Err("usage: dlp_corpus [--show N] [--detector NAME] DIR...".into());
    }
    Ok(o)
}

/// Every file with one of [`EXTENSIONS`] under `dir`, sorted (the report is reproducible).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files(&p, out),
            Ok(t) if t.is_file() => {
                let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
                if EXTENSIONS.contains(&ext) {
                    out.push(p);
                }
            }
            _ => {}
        }
    }
}

/// The line (1-based) of byte `at`, and the line's text around the match, shortened.
fn context(text: &[u8], start: usize, end: usize) -> (usize, String) {
    let line = 1 + text[..start].iter().filter(|&&b| b == b'\n').count();
    let lo = text[..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1)
        .max(start.saturating_sub(60));
    let hi = text[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |p| end + p)
        .min(end + 60);
    let s = |r: std::ops::Range<usize>| String::from_utf8_lossy(&text[r]).into_owned();
    (
        line,
        format!("{}⟦{}⟧{}", s(lo..start), s(start..end), s(end..hi)),
    )
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let sc = match Scanner::from_settings(&DlpSettings::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut paths = Vec::new();
    for r in &o.roots {
        files(r, &mut paths);
    }
    let mut counts: BTreeMap<String, usize> = sc.names().map(|n| (n.to_string(), 0)).collect();
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    let (mut bytes, mut busy) = (0usize, Duration::ZERO);
    for p in &paths {
        let Ok(text) = std::fs::read(p) else {
            continue;
        };
        bytes += text.len();
        let t = Instant::now();
        let mut found = sc.find_all(&text);
        busy += t.elapsed();
        found.sort_by_key(|m| m.start);
        for m in found {
            let name = sc.name(m.detector);
            *counts.entry(name.to_string()).or_default() += 1;
            if o.only.as_deref().is_some_and(|d| d != name) {
                continue;
            }
            let k = shown.entry(name.to_string()).or_default();
            if *k < o.show {
                *k += 1;
                let (line, ctx) = context(&text, m.start, m.end);
                println!("{name}\t{}:{line}\t{ctx}", p.display());
            }
        }
    }
    let mb = bytes as f64 / 1e6;
    println!(
        "\n{} files, {:.1} MB, scanned in {:.2} s ({:.0} MB/s)\n",
        paths.len(),
        mb,
        busy.as_secs_f64(),
        mb / busy.as_secs_f64().max(1e-9)
    );
    println!("{:<24} {:>9} {:>12}", "detector", "findings", "per 10 MB");
    for (name, n) in &counts {
        println!("{name:<24} {n:>9} {:>12.2}", *n as f64 / mb * 10.0);
    }
}
