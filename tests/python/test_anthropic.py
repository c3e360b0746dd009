"""Anthropic's Messages API through the official `anthropic` Python SDK: plain and streamed
messages, tool use streamed as `input_json_delta`, token counting, and every error as the SDK's
own exception — against a real gateway, with the built-in mock and with a recording upstream of
the test's own (which shows what reaches an Anthropic-style upstream: its own key as
`x-api-key`, `anthropic-version` and `anthropic-beta`, never the client's key)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import pytest

KEY = "sk-sluice-CLAUDEclaudeCLAUDEclaudeCLAUDEclaudeCLAU"
SMALL = "sk-sluice-SMALLsmallSMALLsmallSMALLsmallSMALLsmall"
AWS = "AKIAIOSFODNN7EXAMPLE"
EMAIL = "jane.doe@example.com"
UPSTREAM_KEY = "sk-ant-upstream-own-key"
MODEL = "claude-sonnet-4-5-20250929"


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def sse(events: list[dict]) -> bytes:
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def tool_stream(pieces: list[str]) -> bytes:
    """A streamed tool call whose input JSON arrives in `pieces`."""
    events = [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "up", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "store", "input": {}}},
    ]
    events += [{"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": p}} for p in pieces]
    events += [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ]
    return sse(events)


class Recorder:
    """An Anthropic-style upstream: records each request, answers a scripted tool stream (or a
    plain message)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.pieces = ['{"secret": "', AWS[:9], AWS[9:], '", "n": 1}']
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                rec.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                     "body": json.loads(body or b"{}")})
                req = rec.requests[-1]["body"]
                if req.get("stream"):
                    payload, ctype = tool_stream(rec.pieces), "text/event-stream"
                else:
                    payload = json.dumps({
                        "id": "msg_2", "type": "message", "role": "assistant", "model": "up",
                        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                        "stop_sequence": None, "usage": {"input_tokens": 2, "output_tokens": 1},
                    }).encode()
                    ctype = "application/json"
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.server.shutdown()


def config(upstream_port: int, tmp_path) -> dict:
    return {
        "upstreams": [
            {"name": "mock", "builtin": "mock"},
            {"name": "claude-up", "url": f"http://127.0.0.1:{upstream_port}", "api": "anthropic",
             "api_key_env": "TEST_ANTHROPIC_KEY"},
        ],
        "models": [
            {"name": "mock-echo", "upstream": "mock", "upstream_model": "echo"},
            {"name": MODEL, "upstream": "mock", "upstream_model": "echo"},
            {"name": "claude-recorded", "upstream": "claude-up", "upstream_model": "claude-real"},
            {"name": "claude-forbidden", "upstream": "mock"},
        ],
        "orgs": [{"name": "acme"}],
        "roles": [{"name": "dev", "permissions": ["chat"], "models": ["claude-s*", "claude-r*"]}],
        "users": [{"name": "dana", "org": "acme", "role": "dev"}],
        "keys": [
            {"id": "dana-key", "user": "dana", "sha256": sha(KEY)},
            {"id": "dana-small", "user": "dana", "sha256": sha(SMALL),
             "rate_limit": {"tokens_per_minute": 100}},
        ],
        "dlp": {"request_action": "block", "response_action": "redact"},
        "audit": {"path": str(tmp_path / "audit.jsonl"), "fsync": "always"},
        "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "dlp"}, {"type": "audit"}],
    }


@pytest.fixture
def gw(start_gateway, recorder, tmp_path):
    return start_gateway(config(recorder.port, tmp_path), env={"TEST_ANTHROPIC_KEY": UPSTREAM_KEY})


def client(gw, **kw) -> anthropic.Anthropic:
    kw.setdefault("api_key", KEY)
    return anthropic.Anthropic(base_url=gw.public_url, max_retries=0, **kw)


def test_plain_and_streamed_messages_with_the_key_as_x_api_key_or_bearer(gw):
    c = client(gw)
    m = c.messages.create(model=MODEL, max_tokens=64, system="Be brief.",
                          messages=[{"role": "user", "content": "hello there you"}])
    assert m.content[0].text == "hello there you"
    assert m.usage.output_tokens == 3 and m.stop_reason == "end_turn"
    with c.messages.stream(model=MODEL, max_tokens=64,
                           messages=[{"role": "user", "content": "one two three four"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "one two three four"
    assert final.usage.output_tokens == 4
    bearer = anthropic.Anthropic(base_url=gw.public_url, auth_token=KEY, max_retries=0)
    assert bearer.messages.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": "hi"}]).content[0].text == "hi"


def test_answers_are_redacted_in_text_and_streams(gw, recorder):
    c = client(gw)
    # The request may not carry personal data (request_action = block) …
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model=MODEL, max_tokens=8,
                          messages=[{"role": "user", "content": f"mail {EMAIL}"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["code"] == "dlp_blocked"
    # … and a tool call the upstream streams has its input scanned across input_json_delta
    # events: the secret split between two deltas is redacted, the JSON still parses.
    with c.messages.stream(model="claude-recorded", max_tokens=64,
                           messages=[{"role": "user", "content": "store it"}],
                           tools=[{"name": "store", "description": "Stores a value.",
                                   "input_schema": {"type": "object"}}]) as s:
        final = s.get_final_message()
    tool = final.content[0]
    assert tool.type == "tool_use"
    assert tool.input == {"secret": "[REDACTED:aws_access_key]", "n": 1}
    assert final.stop_reason == "tool_use"


def test_what_reaches_an_anthropic_upstream(gw, recorder):
    c = client(gw, default_headers={"anthropic-beta": "tools-2024-05-16"})
    # Claude Code sends `?beta=true`; the query string is kept.
    c.messages.create(model="claude-recorded", max_tokens=16, extra_query={"beta": "true"},
                      messages=[{"role": "user", "content": "hi"}])
    req = recorder.requests[-1]
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert req["path"] == "/v1/messages?beta=true"
    assert headers["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in headers
    assert headers["anthropic-version"]
    assert headers["anthropic-beta"] == "tools-2024-05-16"
    assert req["body"]["model"] == "claude-real"
    assert KEY not in json.dumps(req)


def test_count_tokens_costs_no_tokens(gw):
    c = client(gw, api_key=SMALL)
    r = c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "a b c"}])
    assert r.input_tokens == 3
    for _ in range(5):
        c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "a b c"}])


def test_errors_are_the_sdks_exceptions(gw):
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(gw, api_key="sk-sluice-unknown").messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
    assert e.value.response.headers.get("x-request-id")
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        client(gw).messages.create(model="claude-forbidden", max_tokens=8,
                                   messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "permission_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        client(gw).messages.create(model="claude-none", max_tokens=8,
                                   messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.RateLimitError) as e:
        client(gw, api_key=SMALL).messages.create(model=MODEL, max_tokens=4096,
                                                  messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.BadRequestError) as e:
        client(gw).messages.create(model=MODEL, max_tokens=8, messages="not a list")
    assert e.value.body["error"]["type"] == "invalid_request_error"
