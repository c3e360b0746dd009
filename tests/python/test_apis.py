"""Every OpenAI API through the official Python SDK: chat completions, the Responses API
(plain and streamed, with the SDK's own event accumulation), legacy completions and embeddings,
all governed — keys, DLP both ways, audit with model, stream flag and usage."""

from __future__ import annotations

import hashlib
import json
import time

import openai
import pytest

ALICE = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEalice"
CHATONLY = "sk-sluice-CHATchatCHATchatCHATchatCHATchatCHATchat"
EMAIL = "jane.doe@example.com"
REDACTED = "[REDACTED:email]"


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def config(audit: str, response_action: str = "redact") -> dict:
    return {
        "orgs": [{"name": "acme"}],
        "roles": [
            {"name": "analyst", "permissions": ["chat", "embeddings", "models:list"], "models": ["mock-*"]},
            {"name": "chatter", "permissions": ["chat"], "models": ["mock-*"]},
        ],
        "users": [
            {"name": "alice", "org": "acme", "role": "analyst"},
            {"name": "bob", "org": "acme", "role": "chatter"},
        ],
        "keys": [
            {"id": "alice-key", "user": "alice", "sha256": sha(ALICE)},
            {"id": "bob-key", "user": "bob", "sha256": sha(CHATONLY)},
        ],
        "dlp": {"request_action": "monitor", "response_action": response_action},
        "audit": {"path": audit, "fsync": "always"},
        "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "dlp"}, {"type": "audit"}],
    }


@pytest.fixture
def audit_path(tmp_path):
    return tmp_path / "audit.jsonl"


@pytest.fixture
def gw(start_gateway, audit_path):
    return start_gateway(config(str(audit_path)))


def records(path, want: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        recs = [json.loads(line) for line in lines if line.strip()]
        if len(recs) >= want or time.time() > deadline:
            return recs
        time.sleep(0.05)


def test_chat_completions_plain_and_streamed(gw):
    client = gw.client(api_key=ALICE)
    r = client.chat.completions.create(
        model="mock-echo", messages=[{"role": "user", "content": f"mail {EMAIL} now"}])
    assert r.choices[0].message.content == f"mail {REDACTED} now"
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="mock-echo", stream=True, messages=[{"role": "user", "content": f"mail {EMAIL} now"}])
        if c.choices]
    assert "".join(parts) == f"mail {REDACTED} now"


def test_responses_plain(gw, audit_path):
    client = gw.client(api_key=ALICE)
    r = client.responses.create(model="mock-echo", input=f"please mail {EMAIL} today")
    assert r.output_text == f"please mail {REDACTED} today"
    assert r.usage.input_tokens == 4 and r.usage.output_tokens == 4
    rec = records(audit_path, 1)[-1]
    assert rec["path"] == "/v1/responses"
    assert rec["model"] == "mock-echo" and rec["stream"] is False
    assert rec["usage"] == {"prompt_tokens": 4, "completion_tokens": 4}
    assert any(d["detector"] == "email" and d["direction"] == "response" for d in rec["dlp"])


def test_responses_streamed_with_the_sdk_accumulating_events(gw, audit_path):
    client = gw.client(api_key=ALICE)
    deltas = []
    with client.responses.stream(model="mock-echo", input=f"stream {EMAIL} to me") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.output_text.done":
                assert event.text == f"stream {REDACTED} to me"
        final = stream.get_final_response()
    assert "".join(deltas) == f"stream {REDACTED} to me"
    assert final.output_text == f"stream {REDACTED} to me"
    assert final.usage.output_tokens == 4
    rec = records(audit_path, 1)[-1]
    assert rec["stream"] is True
    assert rec["usage"] == {"prompt_tokens": 4, "completion_tokens": 4}

    # The lower-level iterator (`stream=True`) too.
    events = list(client.responses.create(model="mock-echo", input="a b c", stream=True))
    assert events[-1].type == "response.completed"


def test_a_blocked_responses_stream_is_incomplete(start_gateway, tmp_path):
    gw = start_gateway(config(str(tmp_path / "a.jsonl"), response_action="block"))
    client = gw.client(api_key=ALICE)
    with client.responses.stream(model="mock-echo", input=f"before {EMAIL} after") as stream:
        types = [e.type for e in stream]
    assert types[-1] == "response.incomplete"
    assert "response.completed" not in types
    r = client.responses.create(model="mock-echo", input=f"before {EMAIL} after")
    assert r.status == "incomplete" and r.incomplete_details.reason == "content_filter"
    assert "example.com" not in r.model_dump_json()


def test_completions(gw):
    client = gw.client(api_key=ALICE)
    r = client.completions.create(model="mock-echo", prompt=f"say {EMAIL}")
    assert r.choices[0].text == f"say {REDACTED}"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="mock-echo", prompt=f"say {EMAIL} twice", stream=True) if c.choices)
    assert text == f"say {REDACTED} twice"


def test_embeddings_need_their_permission(gw, audit_path):
    r = gw.client(api_key=ALICE).embeddings.create(model="mock-echo", input=["one two", "three"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 8
    assert r.usage.prompt_tokens == 3
    rec = records(audit_path, 1)[-1]
    assert rec["model"] == "mock-echo" and rec["usage"]["prompt_tokens"] == 3
    with pytest.raises(openai.PermissionDeniedError):
        gw.client(api_key=CHATONLY).embeddings.create(model="mock-echo", input="x")


def test_errors_on_new_routes_are_the_sdk_exceptions(gw):
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-sluice-wrong").responses.create(model="mock-echo", input="x")
    with pytest.raises(openai.NotFoundError):
        gw.client(api_key=ALICE).responses.create(model="no-such-model", input="x")
