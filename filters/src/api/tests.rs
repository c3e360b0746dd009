//! The usage readers and the shared request field readers.

use super::*;

#[test]
fn usage_in_every_shape() {
    let chat = json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}});
    let resp = json!({"response": {"usage": {"input_tokens": 5, "output_tokens": 6}}});
    let start = json!({"message": {"usage": {"input_tokens": 7}}});
    assert_eq!(
        usage_any(&chat["usage"]),
        Some(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_prompt_tokens: 0,
        })
    );
    assert_eq!(
        usage_part_any(&resp),
        Some(UsagePart {
            prompt_tokens: Some(5),
            completion_tokens: Some(6),
            cached_tokens: None,
        })
    );
    let mut u = None;
    if let Some(p) = usage_part_any(&start) {
        p.merge_into(&mut u);
    }
    UsagePart {
        prompt_tokens: None,
        completion_tokens: Some(9),
        cached_tokens: None,
    }
    .merge_into(&mut u);
    assert_eq!(
        u,
        Some(Usage {
            prompt_tokens: 7,
            completion_tokens: 9,
            cached_prompt_tokens: 0,
        })
    );
    assert_eq!(usage_part_any(&json!({"usage": {}})), None);
}

fn cached(v: Value) -> Option<(u64, u64)> {
    let u = Usage::from_json(&v)?;
    Some((u.prompt_tokens, u.cached_prompt_tokens))
}

#[test]
fn cached_prompt_tokens_in_every_shape() {
    // OpenAI chat/completions: `prompt_tokens` already counts the cached ones.
    let chat = json!({"prompt_tokens": 2000, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 1536}});
    assert_eq!(cached(chat), Some((2000, 1536)));
    // Responses.
    let resp = json!({"input_tokens": 1800, "output_tokens": 7,
        "input_tokens_details": {"cached_tokens": 1024}});
    assert_eq!(cached(resp), Some((1800, 1024)));
    // Anthropic: `input_tokens` leaves the cache reads out; they are prompt tokens too.
    let msg = json!({"input_tokens": 20, "output_tokens": 3,
        "cache_read_input_tokens": 4000, "cache_creation_input_tokens": 0});
    assert_eq!(cached(msg), Some((4020, 4000)));
    // No cache reported: nothing cached.
    assert_eq!(
        cached(json!({"prompt_tokens": 9, "completion_tokens": 1})),
        Some((9, 0))
    );
    // Anthropic's stream: message_start carries the cache read, message_delta the output.
    let mut u = None;
    let start = json!({"type": "message_start", "message": {"usage":
        {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}}});
    let delta = json!({"type": "message_delta", "usage": {"output_tokens": 12}});
    for ev in [start, delta] {
        if let Some(p) = usage_part_any(&ev) {
            p.merge_into(&mut u);
        }
    }
    assert_eq!(
        u,
        Some(Usage {
            prompt_tokens: 100,
            completion_tokens: 12,
            cached_prompt_tokens: 90,
        })
    );
}

#[test]
fn model_stream_and_ceilings() {
    let b = json!({"model": "m", "stream": true, "max_tokens": 5, "n": 300});
    assert_eq!(read_model(&b, true).ok().flatten().as_deref(), Some("m"));
    assert!(read_model(&json!({}), true).is_err());
    assert_eq!(read_model(&json!({}), false).ok(), Some(None));
    assert!(read_model(&json!({"model": ["m"]}), false).is_err());
    assert_eq!(read_stream(&b).ok(), Some(true));
    assert!(read_stream(&json!({"stream": "yes"})).is_err());
    assert_eq!(
        read_ceiling(&b, &["max_completion_tokens", "max_tokens"]).ok(),
        Some(Some(5))
    );
    let both = json!({"max_completion_tokens": 0, "max_tokens": 100000, "x": null});
    let fields = ["max_completion_tokens", "max_tokens", "x"];
    assert_eq!(read_ceiling(&both, &fields).ok(), Some(Some(100000)));
    for odd in [json!(1.0), json!("5"), json!(-1), json!(true), json!([5])] {
        let r = read_ceiling(&json!({"max_tokens": odd}), &["max_tokens"]);
        let param = r.err().and_then(|r| r.error_info).and_then(|e| e.param);
        assert_eq!(param.as_deref(), Some("max_tokens"), "{odd}");
    }
    assert_eq!(read_choices(&b), 128);
}
