//! `sluice dlp scan`: findings as `PATH:LINE:COLUMN: DETECTOR` (the value only with `--show`),
//! exit 1 when any, 0 when none, 2 on usage and config errors; the config's `[dlp]` applies.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn scan(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("dlp")
        .arg("scan")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut input = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    drop(input);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p.display().to_string()
}

const KEY: &str = "AKIAIOSFODNN7EXAMPLE";

#[test]
fn findings_name_detector_line_and_column_never_the_value() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = write(
        dir.path(),
        "a.txt",
        &format!("clean line\ncafé {KEY} and ops@corp.io\n"),
    );
    let (code, out, err) = scan(&[&f], None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        out,
        format!("{f}:2:6: aws_access_key\n{f}:2:31: email\n"),
        "columns count characters"
    );
    assert!(!out.contains(KEY) && !err.contains(KEY));
    let (code, out, _) = scan(&["--show", &f], None);
    assert_eq!(code, 1);
    assert!(out.contains(&format!(": aws_access_key: {KEY}")), "{out}");
}

#[test]
fn clean_input_exits_zero_and_stdin_is_read_without_files() {
    let (code, out, err) = scan(
        &[],
        Some("version 1.2.3 at 2024-01-15T10:30:00Z, port 8080\n"),
    );
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, _) = scan(&["-"], Some(&format!("key {KEY}\n")));
    assert_eq!(code, 1);
    assert_eq!(out, "<stdin>:1:5: aws_access_key\n");
}

#[test]
fn the_configs_dlp_section_applies() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            r#"
[[upstreams]]
name = "mock"
builtin = "mock"
[[models]]
name = "m"
upstream = "mock"
[dlp]
packs = ["secrets"]
[[dlp.rules]]
name = "ticket"
regex = 'OPS-[0-9]{{4}}'
[[dlp.allow]]
value = "{KEY}"
"#
        ),
    );
    let f = write(
        dir.path(),
        "a.txt",
        &format!("{KEY} ops@corp.io OPS-1234\n"),
    );
    let (code, out, err) = scan(&["-c", &cfg, &f], None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        out,
        format!("{f}:1:34: ticket\n"),
        "pii is off, the key allowed"
    );
}

#[test]
fn usage_and_config_errors_exit_two() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (code, _, _) = scan(&["--no-such-flag"], None);
    assert_eq!(code, 2);
    let missing = dir.path().join("missing.txt").display().to_string();
    let (code, _, err) = scan(&[&missing], None);
    assert_eq!(code, 2, "{err}");
    let bad = write(
        dir.path(),
        "bad.toml",
        "[dlp]\n[[dlp.allow]]\nregex = '(ab'\n",
    );
    let f = write(dir.path(), "a.txt", "x\n");
    let (code, _, err) = scan(&["-c", &bad, &f], None);
    assert_eq!(code, 2);
    assert!(err.contains("dlp.allow[0].regex"), "{err}");
}
