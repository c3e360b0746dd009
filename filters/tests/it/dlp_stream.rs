//! Streamed responses: secrets split at every offset between two deltas, SSE bytes split at
//! arbitrary points; the client never sees a secret and its concatenated deltas equal the
//! redacted non-streamed text.

use crate::support::dlp::*;
use serde_json::json;
use sluice_filters::dlp::{Action, DlpSettings, RuleSettings};
use sluice_filters::Filter;

const PRIVATE_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx3Jp0b2Zm9Qv8lQk5VbJz1nN8tW6hR0y\nK2cLq9ZfXv4mTtP7sQe1uYw3IjHgFdSaPoNiMbUvCxZl\n-----END RSA PRIVATE KEY-----";

/// Every secret in the packs, once each.
fn secrets() -> Vec<(&'static str, String)> {
    vec![
        ("aws_access_key", "AKIAIOSFODNN7EXAMPLE".into()),
        ("github_token", "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".into()),
        ("openai_api_key", "sk-proj-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LmNbVcXz".into()),
        ("sluice_api_key", "sk-sluice-Q2w3E4r5T6y7U8i9O0pA1s2D3f4G5h6J7k8L9z0X".into()),
        ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U".into()),
        ("private_key", PRIVATE_KEY.into()),
        ("email", "john.doe@example.com".into()),
        ("credit_card", "4111 1111 1111 1111".into()),
        ("us_ssn", "536-22-1234".into()),
        ("iban", "DE89 3704 0044 0532 0130 00".into()),
        ("phone_number", "+1 (415) 555-2671".into()),
        ("ipv4", "81.2.69.142".into()),
    ]
}

fn all_secrets_text() -> String {
    let mut s = String::from("Hello ☕! ");
    for (i, (_, v)) in secrets().iter().enumerate() {
        s.push_str(&format!("Item {i}: {v}. "));
    }
    s.push_str("Done, café.");
    s
}

/// The text with every `[REDACTED:…]` marker taken out.
fn without_markers(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("[REDACTED:") {
        out.push_str(&rest[..i]);
        rest = rest[i..].split_once(']').map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    out
}

/// Streams `pieces` and checks the client's view against the non-streamed answer.
#[track_caller]
fn check_pieces(f: &sluice_filters::dlp::DlpFilter, full: &str, pieces: &[&str]) {
    let (want, want_finish) = non_streamed(f, full);
    let mut c = cx();
    let out = run_events(f, &mut c, &content_stream(pieces));
    let v = client_view(&out);
    assert_eq!(v.content[0], want, "pieces {pieces:?}");
    assert_eq!(v.finish[0].as_deref(), Some(want_finish.as_str()));
    assert!(v.done, "[DONE] reaches the client");
    assert_eq!(v.after_finish, 0);
}

#[test]
fn a_secret_split_at_every_offset_between_two_deltas() {
    let f = filter();
    for (name, secret) in secrets() {
        let full = format!("Here: {secret} -- thanks");
        let marker = format!("[REDACTED:{name}]");
        let (want, _) = non_streamed(&f, &full);
        assert_eq!(
            want,
            format!("Here: {marker} -- thanks"),
            "{name} non-streamed"
        );
        for k in boundaries(&full) {
            let (a, b) = full.split_at(k);
            let mut c = cx();
            let out = run_events(&f, &mut c, &content_stream(&[a, b]));
            let v = client_view(&out);
            assert_eq!(v.content[0], want, "{name} split at {k}");
            let raw = without_markers(&String::from_utf8(out).expect("utf-8"));
            // The secret's distinctive parts never reach the client, in any event.
            for part in secret
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|p| p.len() >= 6)
            {
                assert!(!raw.contains(part), "{name}: `{part}` leaked at split {k}");
            }
            let rec = c
                .dlp
                .iter()
                .find(|d| d.detector == name)
                .expect("finding recorded");
            assert_eq!(
                (rec.direction, rec.action, rec.count),
                ("response", "redact", 1)
            );
        }
    }
}

#[test]
fn all_detectors_in_one_answer_every_two_way_split() {
    let f = filter();
    let full = all_secrets_text();
    for k in boundaries(&full) {
        let (a, b) = full.split_at(k);
        check_pieces(&f, &full, &[a, b]);
    }
}

#[test]
fn an_address_judged_by_what_follows_it_is_judged_alike_at_every_split() {
    // A dotted quad followed by `-` and a letter is a release; by `-` and a digit, a range.
    let f = filter();
    let full = "kernel 5.15.146.1-microsoft, peers 81.2.69.142-81.2.69.150 and 81.2.69.142-";
    let (want, _) = non_streamed(&f, full);
    assert_eq!(
        want,
        "kernel 5.15.146.1-microsoft, peers [REDACTED:ipv4]-[REDACTED:ipv4] and [REDACTED:ipv4]-"
    );
    for k in boundaries(full) {
        let (a, b) = full.split_at(k);
        check_pieces(&f, full, &[a, b]);
    }
}

#[test]
fn token_sized_deltas_and_single_characters() {
    let f = filter();
    let full = all_secrets_text();
    let mut rng = Rng::new(7);
    for max in [1, 2, 3, 4, 6, 9, 16] {
        for _ in 0..8 {
            let ps = pieces(&full, max, &mut rng);
            let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
            check_pieces(&f, &full, &refs);
        }
    }
}

#[test]
fn sse_bytes_split_at_arbitrary_points() {
    let f = filter();
    let full = all_secrets_text();
    let (want, _) = non_streamed(&f, &full);
    let mut rng = Rng::new(11);
    let ps = pieces(&full, 5, &mut rng);
    let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
    let bytes = sse(&content_stream(&refs));
    // Single splits spread over the whole stream, then many random multi-way splits.
    let mut cases: Vec<Vec<usize>> = (0..=bytes.len())
        .step_by(bytes.len() / 150)
        .map(|k| vec![k])
        .collect();
    for _ in 0..120 {
        let n = 1 + rng.below(40);
        let mut cuts: Vec<usize> = (0..n).map(|_| rng.below(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cases.push(cuts);
    }
    for (i, cuts) in cases.iter().enumerate() {
        let mut reads: Vec<&[u8]> = Vec::new();
        let mut last = 0;
        for &c in cuts {
            reads.push(&bytes[last..c]);
            last = c;
        }
        reads.push(&bytes[last..]);
        let mut c = cx();
        let out = run_reads(&f, &mut c, &reads, i % 2 == 0);
        let v = client_view(&out);
        assert_eq!(v.content[0], want, "cuts {cuts:?}");
        assert_eq!(v.finish[0].as_deref(), Some("stop"));
        assert!(v.done);
        assert!(!String::from_utf8_lossy(&out).contains("AKIAIOSFODNN7EXAMPLE"));
    }
}

#[test]
fn only_the_undecided_tail_is_held_back() {
    let f = filter();
    let mut c = cx();
    let mut framer = Framer::default();
    let mut step = |piece: &str| -> String {
        let bytes = sse(&[chunk(0, json!({ "content": piece }), None)]);
        let bytes = &bytes[..bytes.len() - b"data: [DONE]\n\n".len()];
        let mut evs = framer.push(bytes);
        f.on_stream_events(&mut evs, false, &mut c);
        evs.iter()
            .filter_map(|e| e.json())
            .filter_map(|j| {
                j["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    };
    // Complete words go out at once; only the last, unfinished one waits.
    assert_eq!(step("The quick brown fox jum"), "The quick brown fox ");
    assert_eq!(step("ps over the lazy dog. "), "jumps over the lazy dog. ");
    // A possible key prefix waits until it is decided...
    assert_eq!(step("Key: AKIA"), "Key: ");
    assert_eq!(step("IOSFODNN7EXA"), "");
    // ...and goes out redacted once the next byte shows where it ends.
    assert_eq!(step("MPLE and more"), "[REDACTED:aws_access_key] and ");
    // A number that could still grow into a card number waits.
    assert_eq!(step(" 4111 1111"), "more ");
    assert_eq!(step(" 1111 1111 ok "), "[REDACTED:credit_card] ok ");
}

#[test]
fn block_ends_the_answer_with_content_filter() {
    let settings = DlpSettings {
        response_action: Action::Block,
        ..DlpSettings::default()
    };
    let f = filter_with(&settings);
    let full = "Sure. The key is AKIAIOSFODNN7EXAMPLE and the rest is secret too.";
    let (want, finish) = non_streamed(&f, full);
    assert_eq!(want, "Sure. The key is ");
    assert_eq!(finish, "content_filter");
    for k in boundaries(full) {
        let (a, b) = full.split_at(k);
        let mut c = cx();
        let out = run_events(&f, &mut c, &content_stream(&[a, b]));
        let v = client_view(&out);
        assert_eq!(v.content[0], want, "split at {k}");
        assert_eq!(v.finish[0].as_deref(), Some("content_filter"));
        assert_eq!(
            v.after_finish, 0,
            "nothing of the choice after content_filter"
        );
        assert!(v.done);
        let rec = c
            .dlp
            .iter()
            .find(|d| d.detector == "aws_access_key")
            .expect("recorded");
        assert_eq!(
            (rec.direction, rec.action, rec.count),
            ("response", "block", 1)
        );
    }
}

#[test]
fn block_rule_withholds_and_redact_rule_redacts_in_one_stream() {
    let settings = DlpSettings {
        rules: vec![RuleSettings {
            name: "codenames".into(),
            regex: None,
            keywords: Some(vec!["BLUEBIRD".into()]),
            action: Some(Action::Block),
            request_action: None,
            response_action: None,
        }],
        ..DlpSettings::default()
    };
    let f = filter_with(&settings);
    let full = "mail john@example.com then project Bluebird launches at dawn";
    let (want, finish) = non_streamed(&f, full);
    assert_eq!(want, "mail [REDACTED:email] then project ");
    assert_eq!(finish, "content_filter");
    let mut rng = Rng::new(3);
    for _ in 0..50 {
        let ps = pieces(full, 4, &mut rng);
        let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
        check_pieces(&f, full, &refs);
    }
}

#[test]
fn several_choices_are_scanned_separately() {
    let f = filter();
    let a = "choice zero has AKIAIOSFODNN7EXAMPLE inside";
    let b = "choice one mails jane@example.org today";
    let (wa, _) = non_streamed(&f, a);
    let (wb, _) = non_streamed(&f, b);
    let mut evs = vec![
        chunk(0, json!({"role": "assistant", "content": ""}), None),
        chunk(1, json!({"role": "assistant", "content": ""}), None),
    ];
    let (ca, cb): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    for i in (0..ca.len().max(cb.len())).step_by(3) {
        let pa: String = ca.iter().skip(i).take(3).collect();
        let pb: String = cb.iter().skip(i).take(3).collect();
        if !pa.is_empty() {
            evs.push(chunk(0, json!({ "content": pa }), None));
        }
        if !pb.is_empty() {
            evs.push(chunk(1, json!({ "content": pb }), None));
        }
    }
    evs.push(chunk(0, json!({}), Some("stop")));
    evs.push(chunk(1, json!({}), Some("length")));
    let mut c = cx();
    let v = client_view(&run_events(&f, &mut c, &evs));
    assert_eq!(v.content[0], wa);
    assert_eq!(v.content[1], wb);
    assert_eq!(v.finish[0].as_deref(), Some("stop"));
    assert_eq!(v.finish[1].as_deref(), Some("length"));
}

#[test]
fn tool_call_arguments_are_scanned_as_they_stream() {
    let f = filter();
    let args = r#"{"to": "ops@example.com", "key": "AKIAIOSFODNN7EXAMPLE"}"#;
    let want = r#"{"to": "[REDACTED:email]", "key": "[REDACTED:aws_access_key]"}"#;
    for k in boundaries(args) {
        let (a, b) = args.split_at(k);
        let evs = vec![
            chunk(
                0,
                json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "send", "arguments": ""}}]}),
                None,
            ),
            chunk(
                0,
                json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
                None,
            ),
            chunk(
                0,
                json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
                None,
            ),
            chunk(0, json!({}), Some("tool_calls")),
        ];
        let mut c = cx();
        let v = client_view(&run_events(&f, &mut c, &evs));
        assert_eq!(v.tool_args[0], want, "split at {k}");
        let parsed: serde_json::Value = serde_json::from_str(&v.tool_args[0]).expect("still JSON");
        assert_eq!(parsed["to"], "[REDACTED:email]");
    }
}

#[test]
fn a_stream_cut_off_without_finish_reason_is_flushed_at_the_end() {
    let f = filter();
    let evs = vec![
        chunk(0, json!({"content": "reach me at john@exam"}), None),
        chunk(0, json!({"content": "ple.com"}), None),
    ];
    let bytes = sse(&evs);
    let bytes = &bytes[..bytes.len() - b"data: [DONE]\n\n".len()];
    let mut c = cx();
    let v = client_view(&run_reads(&f, &mut c, &[bytes], true));
    assert_eq!(v.content[0], "reach me at [REDACTED:email]");
}

#[test]
fn usage_chunks_and_unknown_events_pass_through() {
    let f = filter();
    let mut evs = content_stream(&["hello ", "world"]);
    evs.push(
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}),
    );
    let mut c = cx();
    let v = client_view(&run_events(&f, &mut c, &evs));
    assert_eq!(v.content[0], "hello world");
    assert!(v.usage);
    assert!(v.done);
    assert!(c.dlp.is_empty());
}

#[test]
fn mask_and_monitor_on_streams() {
    for (action, want) in [
        (Action::Mask, "card ***************1111 ok"),
        (Action::Monitor, "card 4111 1111 1111 1111 ok"),
    ] {
        let settings = DlpSettings {
            response_action: action,
            ..DlpSettings::default()
        };
        let f = filter_with(&settings);
        let full = "card 4111 1111 1111 1111 ok";
        for k in boundaries(full) {
            let (a, b) = full.split_at(k);
            let mut c = cx();
            let v = client_view(&run_events(&f, &mut c, &content_stream(&[a, b])));
            assert_eq!(v.content[0], want);
            assert_eq!(c.dlp.len(), 1);
            assert_eq!(c.dlp[0].action, action.as_str());
        }
    }
}

#[test]
fn other_streams_are_scanned_event_by_event() {
    let f = filter();
    // A Responses-API-style stream through the passthrough route.
    let evs = vec![
        json!({"type": "response.output_text.delta", "delta": "mail ops@example.com now"}),
        json!({"type": "response.output_text.delta", "delta": " and AKIAIOSFODNN7EXAMPLE"}),
    ];
    let mut c = cx();
    let out = String::from_utf8(run_events(&f, &mut c, &evs)).expect("utf-8");
    assert!(
        out.contains(r#""delta":"mail [REDACTED:email] now""#),
        "{out}"
    );
    assert!(
        out.contains(r#""delta":" and [REDACTED:aws_access_key]""#),
        "{out}"
    );
    assert!(out.ends_with("data: [DONE]\n\n"));
    // Plain-text data lines.
    let mut c = cx();
    let reads: [&[u8]; 2] = [b"data: key AKIAIOSFODNN7EXAMPLE\n\n", b": comment\n\n"];
    let out = run_reads(&f, &mut c, &reads, true);
    assert_eq!(out, b"data: key [REDACTED:aws_access_key]\n\n: comment\n\n");
    assert_eq!(c.dlp[0].detector, "aws_access_key");
}

/// Random texts built from words, numbers, secrets and fragments that look like the start of
/// one, streamed in random pieces: the client always gets the non-streamed text.
#[test]
fn random_texts_stream_exactly_like_the_whole_text() {
    let frags: Vec<String> = secrets()
        .into_iter()
        .map(|(_, v)| v)
        .chain(
            [
                "AKIA",
                "sk-",
                "sk-ant-",
                "ghp_",
                "-----BEGIN",
                "eyJ",
                "4111 ",
                "4111 1111",
                "+1 (",
                "(415) ",
                "536-22",
                "DE89 ",
                "DE",
                "@",
                "john@",
                "a.b",
                "192.168.",
                "1.2.3.4.5",
                "hooks.slack.com/",
                "xox",
                "BLUEBIRD",
                "bluebird",
                "Blue",
                "EMP-12",
                "EMP-123456",
                "the",
                "quick",
                "fox",
                "42",
                "2024-01-15",
                "v1.2.3",
                "café",
                "☕",
                "\n",
                ". ",
                ", ",
                " ",
                " ",
                " ",
                "-",
                "_",
                "(",
                ")",
                "+",
                ":",
                "\"",
            ]
            .iter()
            .map(|s| s.to_string()),
        )
        .collect();
    let settings = DlpSettings {
        rules: vec![
            RuleSettings {
                name: "codenames".into(),
                regex: None,
                keywords: Some(vec!["BLUEBIRD".into()]),
                action: Some(Action::Mask),
                request_action: None,
                response_action: None,
            },
            RuleSettings {
                name: "employee_id".into(),
                regex: Some(r"EMP-[0-9]{6}".into()),
                keywords: None,
                action: None,
                request_action: None,
                response_action: None,
            },
        ],
        ..DlpSettings::default()
    };
    let mut rng = Rng::new(2024);
    for action in [Action::Redact, Action::Mask, Action::Block] {
        let f = filter_with(&DlpSettings {
            response_action: action,
            ..settings.clone()
        });
        for case in 0..150 {
            let n = 3 + rng.below(25);
            let text: String = (0..n)
                .map(|_| frags[rng.below(frags.len())].as_str())
                .collect();
            let (want, finish) = non_streamed(&f, &text);
            let ps = pieces(&text, 1 + rng.below(8), &mut rng);
            let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
            let mut c = cx();
            let v = client_view(&run_events(&f, &mut c, &content_stream(&refs)));
            assert_eq!(
                v.content[0], want,
                "{action:?} case {case}: {text:?} as {refs:?}"
            );
            assert_eq!(v.finish[0].as_deref(), Some(finish.as_str()), "{text:?}");
        }
    }
}

/// Deltas with JSON escapes (quotes, newlines, `\uXXXX`) take the general path and plain ones
/// the byte-splicing one; mixed in one stream, with secrets split across both kinds, the client
/// still gets exactly the non-streamed text.
#[test]
fn escaped_and_plain_deltas_mix_in_one_stream() {
    let f = filter();
    let full = "Say \"hi\"\nkey AKIAIOSFODNN7EXAMPLE, mail jöhn.doe@example.com\ttab é ✓ done";
    let chars: Vec<char> = full.chars().collect();
    for size in [1, 2, 3, 5, 8] {
        let pieces: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        check_pieces(&f, full, &refs);
    }
}
