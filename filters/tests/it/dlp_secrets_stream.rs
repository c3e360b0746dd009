//! The new secret kinds in streams: split at every offset between two deltas, the client's
//! text equals the non-streamed redaction, and no distinctive part of the secret leaks. The
//! kinds whose validators look behind the match (a database URL's scheme, a SAS signature's
//! `&`, an assignment's key) and those found from short or shared prefixes are all here.

use crate::support::dlp::*;
use sluice_filters::dlp::tokens::{base62_6, crc32};

fn b62(n: usize, seed: u64) -> String {
    const CS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = Rng::new(seed);
    (0..n).map(|_| CS[r.below(CS.len())] as char).collect()
}

fn hex(n: usize, seed: u64) -> String {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| b"0123456789abcdef"[r.below(16)] as char)
        .collect()
}

fn cases() -> Vec<(&'static str, String)> {
    let random = b62(30, 1);
    let npm = format!(
        "npm_{random}{}",
        String::from_utf8_lossy(&base62_6(crc32(random.as_bytes())))
    );
    vec![
        ("npm_token", npm),
        ("stripe_key", format!("rk_live_{}", hex(24, 2))),
        ("gitlab_token", format!("glrt-{}", b62(24, 3))),
        (
            "grafana_token",
            format!("glsa_{}_{}", b62(32, 4), hex(8, 4)),
        ),
        ("vault_token", format!("hvs.{}", b62(90, 5))),
        ("doppler_token", format!("dp.st.{}", b62(43, 6))),
        ("database_url", format!("postgres://app:{}@db", b62(16, 7))),
        ("azure_sas_token", format!("?sv=1&sig={}%3D", b62(43, 8))),
        ("generic_secret", format!("DB_PASSWORD={}", b62(20, 9))),
        ("telegram_bot_token", format!("123456789:AA{}", b62(33, 10))),
    ]
}

#[test]
fn new_kinds_split_at_every_offset_stream_like_the_whole_text() {
    let f = filter();
    for (name, secret) in cases() {
        let full = format!("Here: {secret} -- thanks");
        let (want, _) = non_streamed(&f, &full);
        assert!(
            want.contains(&format!("[REDACTED:{name}]")),
            "{name}: {want}"
        );
        for k in boundaries(&full) {
            let (a, b) = full.split_at(k);
            let mut c = cx();
            let out = run_events(&f, &mut c, &content_stream(&[a, b]));
            assert_eq!(client_view(&out).content[0], want, "{name} split at {k}");
            let raw = String::from_utf8(out).expect("utf-8");
            let body = secret
                .rsplit(['_', '.', '-', ':', '=', '@'])
                .next()
                .unwrap_or("");
            let body = body.trim_end_matches("%3D");
            assert!(
                body.len() < 8 || !raw.contains(body),
                "{name}: `{body}` leaked at split {k}"
            );
        }
    }
}

#[test]
fn one_character_deltas() {
    let f = filter();
    let text: String = cases()
        .iter()
        .map(|(_, s)| format!("item {s} done. "))
        .collect();
    let (want, _) = non_streamed(&f, &text);
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
    let mut c = cx();
    let out = run_events(&f, &mut c, &content_stream(&pieces));
    assert_eq!(client_view(&out).content[0], want);
}
