//! `[dlp]` configuration: defaults, and every error with its field path.

use sluice_filters::config::Section;
use sluice_filters::dlp::{build, Action, DlpSettings};
use sluice_filters::policy::Policy;
use sluice_filters::Sections;
use sluice_filters::Shared;

fn errors(toml_text: &str) -> Vec<String> {
    let s: DlpSettings = toml::from_str(toml_text).expect("parses");
    let errs = s.build().err().unwrap_or_default().0;
    errs.iter().map(ToString::to_string).collect()
}

#[test]
fn an_empty_section_means_both_packs_block_requests_redact_responses() {
    let s: DlpSettings = toml::from_str("").expect("parses");
    assert_eq!(s.packs, ["secrets", "pii"]);
    assert_eq!(s.request_action, Action::Block);
    assert_eq!(s.response_action, Action::Redact);
    let d = DlpSettings::default();
    assert_eq!(
        (d.packs, d.request_action, d.response_action),
        (s.packs, s.request_action, s.response_action)
    );
    assert!(errors("").is_empty());
}

#[test]
fn the_spec_example_is_valid() {
    let text = r#"
packs = ["secrets", "pii"]
request_action = "block"
response_action = "redact"
[[rules]]
name = "codenames"
keywords = ["BLUEBIRD", "NIGHTJAR"]
action = "block"
[[rules]]
name = "employee_id"
regex = 'EMP-[0-9]{6}'
action = "redact"
"#;
    assert_eq!(errors(text), Vec::<String>::new());
}

#[test]
fn every_error_names_its_field() {
    let text = r#"
packs = ["secrets", "phi", "secrets"]
[[rules]]
name = "ok_rule"
regex = '\bok\b'
[[rules]]
name = "broken"
regex = '(ab'
[[rules]]
name = "both"
regex = 'x'
keywords = ["y"]
[[rules]]
name = "neither"
[[rules]]
name = "email"
keywords = ["z"]
[[rules]]
name = "ok_rule"
keywords = ["", "b"]
[[rules]]
name = "bad name!"
regex = '^start'
[[rules]]
name = "empty_match"
regex = 'a*'
[[rules]]
name = "no_keywords"
keywords = []
"#;
    assert_eq!(
        errors(text),
        [
            "dlp.packs[1]: unknown pack `phi` (known: secrets, pii)",
            "dlp.packs[2]: pack `secrets` is listed twice",
            "dlp.rules[1].regex: unclosed group",
            "dlp.rules[2]: give either `regex` or `keywords`, not both",
            "dlp.rules[3]: give `regex` or `keywords`",
            "dlp.rules[4].name: `email` is a built-in detector's name; pick another",
            "dlp.rules[5].name: duplicate rule name `ok_rule`",
            "dlp.rules[5].keywords[0]: must not be empty",
            "dlp.rules[6].name: use only ASCII letters, digits, `_`, `-` and `.` (it names findings in markers, audit records and metrics)",
            "dlp.rules[6].regex: `^`, `$`, `\\A` and `\\z` anchor to the whole text, which DLP scans in pieces; use `\\b`, or `(?m)` for line anchors",
            "dlp.rules[7].regex: the pattern matches the empty string",
            "dlp.rules[8].keywords: give at least one keyword",
        ]
    );
}

#[test]
fn unknown_keys_and_actions_are_errors() {
    assert!(toml::from_str::<DlpSettings>("pack = [\"pii\"]").is_err());
    assert!(toml::from_str::<DlpSettings>("request_action = \"drop\"").is_err());
    assert!(toml::from_str::<DlpSettings>("[[rules]]\nname = \"x\"\nregexp = \"y\"").is_err());
}

#[test]
fn build_takes_no_options_and_reports_rule_errors() {
    let dlp: DlpSettings =
        toml::from_str("[[rules]]\nname = \"r\"\nregex = \"[\"").expect("parses");
    let policy = Policy {
        orgs: &[],
        roles: &[],
        users: &[],
        keys: &[],
        sections: Sections::new().with(&dlp),
        models: &[],
        agents: &[],
        prices: sluice_filters::spend::no_prices(),
    };
    let shared = Shared::new(prometheus::Registry::new());
    let err = build(&policy, &toml::Table::new(), "filters[2]", &shared)
        .err()
        .expect("a broken regex fails the build");
    assert_eq!(
        err.to_string(),
        "dlp.rules[0].regex: unclosed character class"
    );

    let ok = DlpSettings::default();
    let policy = Policy {
        sections: Sections::new().with(&ok),
        ..policy
    };
    let mut opts = toml::Table::new();
    opts.insert("packs".into(), toml::Value::Array(vec![]));
    let err = build(&policy, &opts, "filters[2]", &shared)
        .err()
        .expect("options rejected");
    assert_eq!(
        err.to_string(),
        "filters[2].packs: unknown option: the dlp filter is configured in [dlp]"
    );
    assert!(build(&policy, &toml::Table::new(), "filters[2]", &shared).is_ok());
}
