//! `sluice check`: every error on its own line with its field path, exit 2.

use std::process::Command;

fn check(toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"
[[upstreams]]
name = "mock"
builtin = "mock"
[[models]]
name = "mock-echo"
upstream = "mock"
"#;

#[test]
fn valid_config_passes_with_a_summary() {
    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn quick_start_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sluice.toml"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_error_is_reported_with_its_path() {
    let bad = r#"
[server]
listen = "127.0.0.1:notaport"
admin_listen = "127.0.0.1:19090"
lisen = "typo"
[[upstreams]]
name = "mock"
builtin = "mock"
[[upstreams]]
name = "remote"
url = "ftp://example"
[[models]]
name = "a"
upstream = "mock"
[[models]]
name = "b"
upstream = "mock"
[[models]]
name = "c"
upstream = "mock"
[[models]]
name = "d"
upstream = "nowhere"
[[orgs]]
name = "acme"
[[roles]]
name = "r"
permissions = ["chat", "fly"]
[[users]]
name = "u"
org = "globex"
role = "r"
[[keys]]
id = "k"
user = "u"
sha256 = "abc"
[[filters]]
type = "teleport"
"#;
    let (code, _out, err) = check(bad);
    assert_eq!(code, 2, "{err}");
    for expected in [
        "server.lisen: unknown key",
        "server.listen:",
        "upstreams[1].url:",
        "models[3].upstream: no upstream named `nowhere`",
        "roles[0].permissions[1]: unknown permission `fly`",
        "users[0].org: no org named `globex`",
        "keys[0].sha256:",
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(expected)),
            "missing `{expected}` in:\n{err}"
        );
    }
}

#[test]
fn unknown_filter_type_is_named() {
    let (code, _, err) = check(&format!("{GOOD}[[filters]]\ntype = \"teleport\"\n"));
    assert_eq!(code, 2);
    assert!(
        err.contains("filters[0].type: unknown filter type `teleport`"),
        "{err}"
    );
}

#[test]
fn type_errors_name_the_field() {
    let (code, _, err) = check(&GOOD.replace("name = \"mock-echo\"", "name = 42"));
    assert_eq!(code, 2);
    assert!(err.contains("models[0].name"), "{err}");
}

#[test]
fn unknown_keys_in_tables_are_errors() {
    let (code, _, err) = check(&format!(
        "{GOOD}[[models]]\nname = \"x\"\nupstream = \"mock\"\nupstream_modle = \"y\"\n"
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("models[1].upstream_modle: unknown key"),
        "{err}"
    );
}

#[test]
fn bad_regexes_and_packs_are_named() {
    let cfg = format!(
        "{GOOD}[dlp]\npacks = [\"secrets\", \"phi\"]\n[[dlp.rules]]\nname = \"ok\"\nregex = 'EMP-[0-9]{{6}}'\n[[dlp.rules]]\nname = \"broken\"\nregex = 'EMP-([0-9]'\n"
    );
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("dlp.rules[1].regex:")),
        "{err}"
    );
    assert!(err.lines().any(|l| l.starts_with("dlp.packs[1]:")), "{err}");
}

#[test]
fn the_commented_example_config_is_valid() {
    // Its remote upstreams are pointed at loopback (no DNS here) and its key variable set.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/sluice.example.toml"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
    .replace("https://api.openai.com", "http://127.0.0.1:1")
    .replace("http://127.0.0.1:8000", "http://127.0.0.1:2")
    .replace("https://api.anthropic.com", "http://127.0.0.1:3")
    .replace("api_key_env = \"OPENAI_API_KEY\"", "api_key_env = \"PATH\"")
    .replace(
        "api_key_env = \"ANTHROPIC_API_KEY\"",
        "api_key_env = \"PATH\"",
    );
    let (code, out, err) = check(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("filters: [auth, rate_limit, dlp, audit]"),
        "{out}"
    );
}

#[test]
fn targets_routing_and_health_checks_are_checked_with_their_paths() {
    let good = format!(
        r#"{GOOD}[[upstreams]]
name = "other"
builtin = "mock"
health_check = {{ path = "/v1/models", interval_ms = 5000, timeout_ms = 1000 }}
[[models]]
name = "both-ways"
targets = [
  {{ upstream = "mock", upstream_model = "echo", weight = 3 }},
  {{ upstream = "other", priority = 2 }},
]
[routing]
retries = 2
retry_on = ["connect", "timeout", "5xx", "429"]
eject_after = 3
eject_seconds = 30
"#
    );
    let (code, out, err) = check(&good);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 upstreams, 2 models"), "{out}");

    let bad = format!(
        r#"{GOOD}[[upstreams]]
name = "other"
builtin = "mock"
health_check = {{ path = "v1/models", interval_ms = 5, timeout_ms = 0 }}
[[models]]
name = "a"
upstream = "mock"
targets = [{{ upstream = "mock" }}]
[[models]]
name = "b"
targets = []
[[models]]
name = "c"
upstream_model = "x"
targets = [
  {{ upstream = "mock", weight = 0 }},
  {{ upstream = "nowhere" }},
  {{ upstream = "other", priority = 0 }},
  {{ upstream = "mock" }},
]
[[models]]
name = "d"
[routing]
retries = 11
retry_on = ["connect", "teapot"]
eject_seconds = 301
"#
    );
    let (code, _, err) = check(&bad);
    assert_eq!(code, 2, "{err}");
    for expected in [
        "upstreams[1].health_check.path:",
        "upstreams[1].health_check.interval_ms:",
        "upstreams[1].health_check.timeout_ms:",
        "models[1]: set either `upstream` (one upstream) or `targets` (several), not both",
        "models[2].targets: must hold at least one target",
        "models[3].upstream_model: with `targets`",
        "models[3].targets[0].weight: must be between 1 and 1000",
        "models[3].targets[1].upstream: no upstream named `nowhere` in [[upstreams]]",
        "models[3].targets[2].priority: must be between 1 (first) and 100",
        "models[3].targets[3].upstream: `mock` is already a target of this model",
        "models[4]: needs `upstream",
        "routing.retries: must be between 0 and 10",
        "routing.retry_on[1]: unknown failure `teapot`",
        "routing.eject_seconds: must be between 1 and 300",
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(expected)),
            "missing `{expected}` in:\n{err}"
        );
    }
    let typo = format!(
        "{GOOD}[[models]]\nname = \"t\"\ntargets = [{{ upstream = \"mock\", wieght = 2 }}]\n"
    );
    let (code, _, err) = check(&typo);
    assert_eq!(code, 2);
    assert!(
        err.contains("models[1].targets[0].wieght: unknown key"),
        "{err}"
    );
}

#[test]
fn unknown_sections_are_errors() {
    // A top-level table is kept for a filter type that owns it; none does here.
    let (code, _, err) = check(&format!("{GOOD}[quota]\nmax_requests = 1\n"));
    assert_eq!(code, 2);
    assert!(err.contains("quota: unknown key"), "{err}");
    // Reported with the file's other errors, all at once.
    let bad = GOOD.replace(":18080", ":notaport");
    let (code, _, err) = check(&format!("{bad}[quota]\nmax_requests = 1\n"));
    assert_eq!(code, 2);
    assert!(err.contains("quota: unknown key"), "{err}");
    assert!(err.contains("server.listen:"), "{err}");
    // Any other unknown top-level key is reported as it always was.
    let (code, _, err) = check(&format!("nonsense = 1\n{GOOD}"));
    assert_eq!(code, 2);
    assert!(err.contains("nonsense: unknown key"), "{err}");
}
