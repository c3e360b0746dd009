//! Every built-in detector on real-shaped values, its near-misses, and custom rules.

use sluice_filters::dlp::tokens::{base62_6, crc32};
use sluice_filters::dlp::{builtin_names, Action, DlpSettings, RuleSettings, Scanner};

fn scanner() -> Scanner {
    Scanner::from_settings(&DlpSettings::default()).expect("default settings build")
}

fn redact(text: &str) -> String {
    scanner().apply(text, Action::Redact)
}

/// A deterministic mixed-case alphanumeric string of `n` characters.
fn token(n: usize, seed: u32) -> String {
    const CS: &[u8] = b"aB3cD4eF5gH6iJ7kL8mN9oP0qR1sT2uVwXyZ";
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            CS[(x as usize) % CS.len()] as char
        })
        .collect()
}

/// A token with GitHub's and npm's checksum: `prefix`, 30 random characters, their CRC32 in
/// base62.
fn checksummed(prefix: &str, seed: u32) -> String {
    let random = token(30, seed);
    let sum = base62_6(crc32(random.as_bytes()));
    format!("{prefix}{random}{}", String::from_utf8_lossy(&sum))
}

#[track_caller]
fn caught(detector: &str, secret: &str) {
    for (before, after) in [("", ""), ("my key is ", " ok"), ("(", ")"), ("\"", "\"\n")] {
        let text = format!("{before}{secret}{after}");
        let want = format!("{before}[REDACTED:{detector}]{after}");
        assert_eq!(redact(&text), want, "{detector} in {text:?}");
    }
}

#[track_caller]
fn clean(text: &str) {
    assert_eq!(redact(text), text, "flagged: {text:?}");
}

#[test]
fn detector_names_are_stable() {
    let names: Vec<&str> = builtin_names().collect();
    assert_eq!(
        names[..14],
        [
            "sluice_api_key",
            "anthropic_api_key",
            "openai_api_key",
            "aws_access_key",
            "github_token",
            "gitlab_token",
            "slack_token",
            "slack_webhook",
            "stripe_key",
            "google_api_key",
            "huggingface_token",
            "sendgrid_api_key",
            "private_key",
            "jwt",
        ]
    );
    // New detectors come after these, under their own names; the PII pack keeps its names.
    let pii: Vec<&str> = names.iter().rev().take(6).rev().copied().collect();
    assert_eq!(
        pii,
        [
            "email",
            "credit_card",
            "us_ssn",
            "iban",
            "phone_number",
            "ipv4",
        ]
    );
}

#[test]
fn secrets_pack() {
    caught("aws_access_key", "AKIAIOSFODNN7EXAMPLE");
    caught("aws_access_key", "ASIAY34FZKBOKMUTVV7A");
    caught("github_token", &checksummed("ghp_", 1));
    caught("github_token", &checksummed("gho_", 2));
    caught(
        "github_token",
        &format!("github_pat_{}_{}", token(22, 3), token(59, 4)),
    );
    caught("gitlab_token", &format!("glpat-{}", token(20, 5)));
    caught(
        "slack_token",
        "xoxb-2483920183-4829102938475-AbCdEfGhIjKlMnOpQrStUvWx",
    );
    caught(
        "slack_token",
        "xoxp-1234567890-0987654321-1122334455-abcdef0123456789abcdef0123456789",
    );
    caught("openai_api_key", &format!("sk-{}", token(48, 6)));
    caught(
        "openai_api_key",
        &format!("sk-proj-{}-{}", token(40, 7), token(60, 8)),
    );
    caught(
        "anthropic_api_key",
        &format!("sk-ant-api03-{}-{}AA", token(60, 9), token(31, 10)),
    );
    caught("stripe_key", &format!("sk_live_{}", token(24, 11)));
    caught("stripe_key", &format!("rk_test_{}", token(30, 12)));
    caught("google_api_key", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe");
    caught("huggingface_token", &format!("hf_{}", token(34, 13)));
    caught(
        "sendgrid_api_key",
        &format!("SG.{}.{}", token(22, 14), token(43, 15)),
    );
    caught("sluice_api_key", &format!("sk-sluice-{}", token(40, 16)));
    caught(
        "jwt",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    );
}

#[test]
fn slack_webhook_keeps_the_scheme() {
    assert_eq!(
        redact("post to https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX now"),
        "post to https://[REDACTED:slack_webhook] now"
    );
}

#[test]
fn private_key_blocks_whole() {
    let body = (0..6)
        .map(|i| token(64, 100 + i))
        .collect::<Vec<_>>()
        .join("\n");
    for kind in [
        "RSA PRIVATE KEY",
        "PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "EC PRIVATE KEY",
    ] {
        let block = format!("-----BEGIN {kind}-----\n{body}\n-----END {kind}-----");
        assert_eq!(
            redact(&format!("Here it is:\n{block}\nKeep it safe.")),
            "Here it is:\n[REDACTED:private_key]\nKeep it safe."
        );
    }
    // Encrypted PEM with header fields.
    let pem = format!(
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{}\n\n{body}\n-----END RSA PRIVATE KEY-----",
        token(32, 200)
    );
    assert_eq!(redact(&pem), "[REDACTED:private_key]");
    // A block cut off before its footer is still withheld.
    let cut = format!("-----BEGIN PRIVATE KEY-----\n{}", token(64, 300));
    assert_eq!(redact(&cut), "[REDACTED:private_key]");
    clean("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    clean("-----BEGIN PUBLIC KEY-----");
}

#[test]
fn more_specific_secret_wins() {
    let ant = format!("sk-ant-api03-{}", token(93, 21));
    assert_eq!(redact(&ant), "[REDACTED:anthropic_api_key]");
    let own = format!("sk-sluice-{}", token(40, 22));
    assert_eq!(redact(&own), "[REDACTED:sluice_api_key]");
}

#[test]
fn secret_near_misses() {
    clean("AKIAIOSFODNN7EXAMPL is too short");
    clean("XAKIAIOSFODNN7EXAMPLE is inside a word");
    clean("AKIAIOSFODNN7EXAMPLEX is too long");
    clean("ASIA PACIFIC region, ASIAN markets");
    clean("use sk-learn-compatible-estimators-everywhere");
    clean("task-based risk-free desk-top");
    clean(&format!("ghp_{}", token(35, 30)));
    clean("eyJ is how base64 JSON starts; eyJhbGciOiJIUzI1NiJ9 alone is no token");
    clean("hf_hub_download(repo_id=\"bert-base\")");
    clean("xoxo, see you");
}

#[test]
fn pii_pack() {
    caught("email", "john.doe@example.com");
    caught("email", "a.b-c+tag@mail.sub.example.co.uk");
    caught("credit_card", "4111 1111 1111 1111");
    caught("credit_card", "4111-1111-1111-1111");
    caught("credit_card", "4111111111111111");
    caught("credit_card", "5555555555554444");
    caught("credit_card", "3782 822463 10005");
    caught("credit_card", "378282246310005");
    caught("credit_card", "6011111111111117");
    caught("us_ssn", "536-22-1234");
    caught("us_ssn", "219 09 9999");
    caught("iban", "DE89 3704 0044 0532 0130 00");
    caught("iban", "DE89370400440532013000");
    caught("iban", "GB82WEST12345698765432");
    caught("iban", "FR14 2004 1010 0505 0001 3M02 606");
    caught("phone_number", "(415) 555-2671");
    caught("phone_number", "415-555-2671");
    caught("phone_number", "415.555.2671");
    caught("phone_number", "+1 415 555 2671");
    caught("phone_number", "+1 (415) 555-2671");
    caught("phone_number", "+44 20 7946 0958");
    caught("phone_number", "+49 30 1234567");
    caught("ipv4", "81.2.69.142");
    caught("ipv4", "93.184.216.34");
    caught("ipv4", "203.0.114.7");
}

#[test]
fn pii_near_misses() {
    // Luhn-invalid cards.
    clean("4111 1111 1111 1112");
    clean("4111111111111121");
    clean("5555555555554445");
    // Luhn-valid but no card network starts so.
    clean("order 1234567812345670");
    // Mixed separators.
    clean("4111 1111-1111 1111");
    // Invalid SSNs: area 000, 666, 9xx; group 00; serial 0000.
    clean("000-12-3456");
    clean("666-12-3456");
    clean("912-12-3456");
    clean("536-00-1234");
    clean("536-22-0000");
    // IBANs with a wrong checksum or length.
    clean("DE89 3704 0044 0532 0130 01");
    clean("GB82WEST12345698765433");
    clean("DE89370400440532013");
    // Not addresses.
    clean("1.2.3.4.5");
    clean("999.1.1.1");
    clean("0.1.2.3");
    clean("127.0.0.1");
    // Private, documentation and other special-purpose blocks identify no one.
    clean("192.168.1.10");
    clean("10.0.0.1");
    clean("255.255.255.255");
    clean("203.0.113.7");
    clean("icon@2x.png");
    clean("user@localhost");
    clean("@types/node");
    // Not phone numbers.
    clean("2024-01-15 10:30:00");
    clean("call 123");
}

#[test]
fn a_card_before_an_expiry_date_is_still_a_card() {
    assert_eq!(
        redact("card 4111 1111 1111 1111 12/27"),
        "card [REDACTED:credit_card] 12/27"
    );
}

#[test]
fn mask_keeps_the_last_four() {
    let sc = scanner();
    assert_eq!(
        sc.apply("pay with 4111 1111 1111 1111.", Action::Mask),
        "pay with ***************1111."
    );
    assert_eq!(
        sc.apply("AKIAIOSFODNN7EXAMPLE", Action::Mask),
        "****************MPLE"
    );
}

#[test]
fn monitor_changes_nothing() {
    let text = "AKIAIOSFODNN7EXAMPLE and john@example.com";
    assert_eq!(scanner().apply(text, Action::Monitor), text);
}

fn with_rules(rules: Vec<RuleSettings>) -> Scanner {
    let settings = DlpSettings {
        packs: vec![],
        rules,
        ..DlpSettings::default()
    };
    Scanner::from_settings(&settings).expect("rules build")
}

fn rule(name: &str, regex: Option<&str>, keywords: Option<&[&str]>) -> RuleSettings {
    RuleSettings {
        name: name.into(),
        regex: regex.map(Into::into),
        keywords: keywords.map(|k| k.iter().map(|s| s.to_string()).collect()),
        action: None,
        request_action: None,
        response_action: None,
    }
}

#[test]
fn keyword_rules_are_case_insensitive_whole_words() {
    let sc = with_rules(vec![rule(
        "codenames",
        None,
        Some(&["BLUEBIRD", "NIGHTJAR", "Red Fox"]),
    )]);
    let r = |t: &str| sc.apply(t, Action::Redact);
    assert_eq!(
        r("Project bluebird ships."),
        "Project [REDACTED:codenames] ships."
    );
    assert_eq!(
        r("NightJar/BLUEBIRD"),
        "[REDACTED:codenames]/[REDACTED:codenames]"
    );
    assert_eq!(r("the red fox"), "the [REDACTED:codenames]");
    assert_eq!(r("BLUEBIRDS and nightjars"), "BLUEBIRDS and nightjars");
}

#[test]
fn regex_rules() {
    let sc = with_rules(vec![
        rule("employee_id", Some(r"EMP-[0-9]{6}"), None),
        rule("ticket", Some(r"\b[A-Z]{2,5}-\d{3,6}\b"), None),
        rule("greek", Some(r"\p{Greek}{3,}"), None),
    ]);
    let r = |t: &str| sc.apply(t, Action::Redact);
    assert_eq!(r("id EMP-123456."), "id [REDACTED:employee_id].");
    assert_eq!(r("see OPS-1234 now"), "see [REDACTED:ticket] now");
    assert_eq!(r("café OPS-1234é"), "café [REDACTED:ticket]é");
    assert_eq!(r("λόγος x"), "[REDACTED:greek] x");
}

#[test]
fn custom_rule_action_overrides_the_direction() {
    let mut r = rule("employee_id", Some(r"EMP-[0-9]{6}"), None);
    r.action = Some(Action::Mask);
    let sc = with_rules(vec![r]);
    assert_eq!(sc.apply("EMP-123456", Action::Redact), "******3456");
}
