//! Precision on real text no one here wrote: the committed sample in `tests/data/dlp_corpus`
//! (code, docs and test vectors from permissively licensed crates; see its `SOURCES.md`) must
//! give no finding at all with both packs on. The whole-corpus report is
//! `cargo run --release -p sluice-filters --example dlp_corpus -- ~/.cargo/registry/src`.

use std::path::{Path, PathBuf};

use sluice_filters::dlp::{DlpSettings, Scanner};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("the sample is committed") {
        let p = e.expect("readable").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.file_name().is_some_and(|n| n != "SOURCES.md") {
            out.push(p);
        }
    }
}

#[test]
fn the_committed_sample_has_no_false_positive() {
    let sc = Scanner::from_settings(&DlpSettings::default()).expect("builds");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dlp_corpus");
    let mut paths = Vec::new();
    files(&root, &mut paths);
    assert!(
        paths.len() >= 15,
        "the sample is there ({} files)",
        paths.len()
    );
    let (mut bytes, mut found) = (0, Vec::new());
    for p in &paths {
        let text = std::fs::read(p).expect("readable");
        bytes += text.len();
        for m in sc.find_all(&text) {
            let line = 1 + text[..m.start].iter().filter(|&&b| b == b'\n').count();
            found.push(format!(
                "{}:{line}: {} {:?}",
                p.strip_prefix(&root).unwrap_or(p).display(),
                sc.name(m.detector),
                String::from_utf8_lossy(&text[m.start..m.end])
            ));
        }
    }
    assert!(
        bytes > 500_000,
        "the sample is large enough ({bytes} bytes)"
    );
    assert!(found.is_empty(), "false positives:\n{}", found.join("\n"));
}

#[test]
fn the_same_sample_with_secrets_planted_is_caught() {
    // The sample is clean because the detectors are precise, not because they are off.
    let sc = Scanner::from_settings(&DlpSettings::default()).expect("builds");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dlp_corpus");
    let text = std::fs::read_to_string(root.join("ipnet-2.12.2/src/ipnet.rs")).expect("readable");
    let planted = text.replacen(
        "\n",
        "\n// card 4111 1111 1111 1111, call +1 (415) 555-2671, host 81.2.69.142\n",
        1,
    );
    let mut names: Vec<&str> = sc
        .find_all(planted.as_bytes())
        .iter()
        .map(|m| sc.name(m.detector))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names, ["credit_card", "ipv4", "phone_number"]);
}
