//! The PII detectors read numbers in code the way a compiler does: literals, exponents,
//! versions, timestamps, line and column numbers, ports, big constants and lists of numbers are
//! not phone numbers, cards or addresses — while the same values written as data still are.

use sluice_filters::dlp::{Action, DlpSettings, Scanner};

fn scanner() -> Scanner {
    Scanner::from_settings(&DlpSettings::default()).expect("builds")
}

#[track_caller]
fn clean(sc: &Scanner, text: &str) {
    let found: Vec<String> = sc
        .find_all(text.as_bytes())
        .iter()
        .map(|m| format!("{} {:?}", sc.name(m.detector), &text[m.start..m.end]))
        .collect();
    assert!(found.is_empty(), "{text:?}: {found:?}");
}

#[track_caller]
fn redacts(sc: &Scanner, text: &str, want: &str) {
    assert_eq!(sc.apply(text, Action::Redact), want);
}

#[test]
fn numeric_literals_are_not_phone_numbers_or_cards() {
    let sc = scanner();
    for text in [
        // Exponents, with and without a sign.
        "let x = 1.2345E12345678;",
        "let x = 1.2345E+12345678;",
        "assert_eq!(parse(\"-20165.4676_e-4294967292\"), Err(e));",
        "6.02214076e+2314159265358",
        // Fractions of decimals, and decimals that go on.
        "5.3575520046180838, 7.2288186904958804",
        "(\"-423.1744746042687488\", \"3960577151543.5796707636412416\")",
        "let t = +1441497364.649;",
        // Hex and digit separators are glued to letters or underscores.
        "0x4111111111111111 0X5555555555554444 4111_1111_1111_1111 0o4155552671",
        // 64-bit constants, bare.
        "const SEED: u64 = 4951948911778577463; let b = 6398757850768963907;",
        "current_block = 4488286894823169796;",
        // Timezone offsets and expanded years.
        "check(\"+12345678\", Err(TOO_LONG)); datetime!(+999999-12-31 23:59:59)",
        "\"+262142-12-31\" \"+262143-01-01T01:59:59\" \"+10000-01-01\"",
        "i32 goes from -2147483648 to +2147483647",
        // Lists of numbers.
        "sizes: 160 192 200 224 256 384 512 768 1024 2048 4096",
        // Line and column numbers, times, ratios.
        "src/main.rs:4155552671:12 at 415-555-2671:9, 14:32:05.123",
        // Versions, section numbers, OIDs.
        "v1.2.3.4 and 7.3.17.1, section 8.1.3.6, K.3.7.4.1, oid 1.3.101.112, 2.5.29.35",
        // Releases with a suffix: a kernel's, a pre-release.
        "OS: Ubuntu 22.04.3 LTS (5.15.146.1-microsoft-standard-WSL2), 81.2.69.142-rc1",
        // UUIDs, hashes, timestamps.
        "550e8400-e29b-41d4-a716-446655440000 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 1700000000123",
        // Ports and addresses nobody owns.
        "bind 0.0.0.0:8080, 127.0.0.1:5432, 10.0.0.1:443, 192.168.1.10/24, 172.16.0.0/12",
        "docs use 192.0.2.1, 198.51.100.7, 203.0.113.9; resolvers 8.8.8.8, 1.1.1.1; masks 255.255.240.0",
        "placeholders 1.2.3.4, 5.6.7.8, 20.30.40.50, 101.102.103.104, 128.128.128.128",
    ] {
        clean(&sc, text);
    }
}

#[test]
fn the_same_values_as_data_are_still_found() {
    let sc = scanner();
    redacts(
        &sc,
        "let card = \"4111 1111 1111 1111\"; // test",
        "let card = \"[REDACTED:credit_card]\"; // test",
    );
    redacts(
        &sc,
        "card=4111111111111111.",
        "card=[REDACTED:credit_card].",
    );
    redacts(
        &sc,
        "# call +1 (415) 555-2671 or +44 20 7946 0958",
        "# call [REDACTED:phone_number] or [REDACTED:phone_number]",
    );
    redacts(&sc, "tel:+14155552671", "tel:[REDACTED:phone_number]");
    redacts(
        &sc,
        "peer 81.2.69.142:8080 said",
        "peer [REDACTED:ipv4]:8080 said",
    );
    redacts(&sc, "http://93.184.216.34/x", "http://[REDACTED:ipv4]/x");
    // A range, a dash before a digit or after a space: still addresses.
    redacts(
        &sc,
        "from 81.2.69.142-81.2.69.150 and 81.2.69.142 - done",
        "from [REDACTED:ipv4]-[REDACTED:ipv4] and [REDACTED:ipv4] - done",
    );
    redacts(
        &sc,
        "card 4111 1111 1111 1111 12/27",
        "card [REDACTED:credit_card] 12/27",
    );
}

#[test]
fn e_mail_lookalikes_in_urls_and_ssh_are_not_addresses() {
    let sc = scanner();
    clean(&sc, "git clone git@github.com:org/repo.git");
    clean(
        &sc,
        "https://user:pass@host.example.net/x and redis://cache@db.internal/0",
    );
    clean(
        &sc,
        "Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com",
    );
    clean(&sc, "KexAlgorithms curve25519-sha256@libssh.org");
    redacts(
        &sc,
        "[mail](mailto:ops@corp.io)",
        "[mail](mailto:[REDACTED:email])",
    );
}
