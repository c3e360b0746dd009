//! `[[dlp.allow]]`: an allowed value passes, its neighbours do not; per detector or for all;
//! every config error names its field.

use sluice_filters::config::Section;
use sluice_filters::dlp::{Action, DlpSettings, Scanner};

fn settings(toml_text: &str) -> DlpSettings {
    toml::from_str(toml_text).expect("parses")
}

fn scanner(toml_text: &str) -> Scanner {
    Scanner::from_settings(&settings(toml_text)).expect("builds")
}

fn errors(toml_text: &str) -> Vec<String> {
    let errs = settings(toml_text).build().err().unwrap_or_default().0;
    errs.iter().map(ToString::to_string).collect()
}

#[test]
fn an_allowed_value_passes_and_its_neighbours_do_not() {
    let sc = scanner(
        r#"
[[allow]]
value = "4111 1111 1111 1111"
detectors = ["credit_card"]
"#,
    );
    let r = |t: &str| sc.apply(t, Action::Redact);
    assert_eq!(
        r("test card 4111 1111 1111 1111."),
        "test card 4111 1111 1111 1111."
    );
    // The same number written otherwise, another test card, a real-looking one: findings.
    assert_eq!(r("card 4111111111111111"), "card [REDACTED:credit_card]");
    assert_eq!(r("card 5555 5555 5555 4444"), "card [REDACTED:credit_card]");
    assert_eq!(r("card 4012 8888 8888 1881"), "card [REDACTED:credit_card]");
}

#[test]
fn a_regex_must_match_the_whole_finding() {
    let sc = scanner(
        r#"
[[allow]]
regex = 'AKIA[A-Z2-7]{12}EXAMPLE'
[[allow]]
regex = '[a-z0-9.]+@example\.com'
detectors = ["email"]
"#,
    );
    let r = |t: &str| sc.apply(t, Action::Redact);
    assert_eq!(r("AKIAIOSFODNNEXAMPLE"), "AKIAIOSFODNNEXAMPLE");
    assert_eq!(
        r("key AKIAIOSFODNN7EXAMPLE"),
        "key [REDACTED:aws_access_key]"
    );
    assert_eq!(r("mail ops@example.com"), "mail ops@example.com");
    assert_eq!(r("mail ops@example.com.evil.io"), "mail [REDACTED:email]");
    assert_eq!(r("mail Ops@example.com"), "mail [REDACTED:email]");
}

#[test]
fn a_rule_for_one_detector_exempts_no_other() {
    let sc = scanner(
        r#"
[[rules]]
name = "ticket"
regex = 'OPS-[0-9]{4}'
[[allow]]
value = "OPS-1234"
detectors = ["email"]
[[allow]]
value = "OPS-9999"
"#,
    );
    let r = |t: &str| sc.apply(t, Action::Redact);
    assert_eq!(r("see OPS-1234"), "see [REDACTED:ticket]");
    assert_eq!(r("see OPS-9999"), "see OPS-9999");
}

#[test]
fn allowed_values_pass_in_streams_too() {
    // The decision is made on the match's own bytes, so every split agrees with the whole.
    let sc = scanner("[[allow]]\nvalue = \"john.doe@example.com\"\n");
    let text = "from john.doe@example.com to jane.doe@example.com";
    assert_eq!(
        sc.apply(text, Action::Redact),
        "from john.doe@example.com to [REDACTED:email]"
    );
}

#[test]
fn config_errors_name_their_field() {
    let errs = errors(
        r#"
[[allow]]
regex = '(ab'
[[allow]]
value = "x"
regex = "y"
[[allow]]
[[allow]]
value = "ok"
detectors = ["credit_card", "no_such_detector"]
[[allow]]
regex = 'a*'
[[allow]]
value = ""
[[allow]]
value = "v"
detectors = []
"#,
    );
    let want_prefixes = [
        "dlp.allow[0].regex: ",
        "dlp.allow[1]: give either `value` or `regex`",
        "dlp.allow[2]: give `value` or `regex`",
        "dlp.allow[3].detectors[1]: unknown detector `no_such_detector`",
        "dlp.allow[4].regex: the pattern matches the empty string",
        "dlp.allow[5].value: must not be empty",
        "dlp.allow[6].detectors: give at least one detector",
    ];
    assert_eq!(errs.len(), want_prefixes.len(), "{errs:#?}");
    for w in want_prefixes {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "{w} not in {errs:#?}"
        );
    }
    let unknown: Result<DlpSettings, _> = toml::from_str("[[allow]]\nvalues = \"x\"\n");
    assert!(unknown.is_err(), "unknown keys are errors");
}
