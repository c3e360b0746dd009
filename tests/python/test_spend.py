"""Spend (SPEC §15) through the official SDKs: a spent budget is the OpenAI SDK's
`RateLimitError` with type `insufficient_quota` and code `budget_exceeded` (and a Retry-After
until the reset), the Anthropic SDK's `RateLimitError` with the same code; the remaining budget
header and `GET /v1/usage` say what was spent."""

from __future__ import annotations

import hashlib

import anthropic
import openai
import pytest
import requests

KEY = "sk-sluice-SPENDspendSPENDspendSPENDspendSPENDspend"


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def config(tmp_path) -> dict:
    # $1 per token in and out; a $30 daily budget holds a couple of small requests.
    price = {"input_per_mtok": 1000000, "output_per_mtok": 1000000}
    return {
        "upstreams": [
            {"name": "mock", "builtin": "mock"},
            {"name": "mock-anthropic", "builtin": "mock", "api": "anthropic"},
        ],
        "models": [
            {"name": "mock-echo", "upstream": "mock", "upstream_model": "echo", "price": price},
            {"name": "claude-test", "upstream": "mock-anthropic", "upstream_model": "echo",
             "price": price},
        ],
        "orgs": [{"name": "acme"}],
        "roles": [{"name": "dev", "permissions": ["chat", "models:list"], "models": ["*"]}],
        "users": [{"name": "ann", "org": "acme", "role": "dev",
                   "budget": {"usd": 30, "period": "daily"}}],
        "keys": [{"id": "ann-key", "user": "ann", "sha256": sha(KEY)}],
        "store": {"url": f"sqlite://{tmp_path / 'store.db'}"},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "audit"}],
    }


def test_budget_refusals_in_each_sdk_and_the_usage_api(start_gateway, tmp_path):
    gw = start_gateway(config(tmp_path))
    client = gw.client(api_key=KEY)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-echo", max_tokens=4, messages=[{"role": "user", "content": "two words"}])
    remaining = float(raw.headers["x-sluice-budget-remaining-usd"])
    assert 0 < remaining < 30
    answer = raw.parse()
    first_cost = answer.usage.prompt_tokens + answer.usage.completion_tokens

    # Ask for far more than the budget holds.
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(
            model="mock-echo", max_tokens=100,
            messages=[{"role": "user", "content": "too expensive"}])
    assert e.value.status_code == 429
    assert e.value.code == "budget_exceeded"
    assert e.value.type == "insufficient_quota"
    assert "user `ann`" in e.value.message
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 86400

    claude = anthropic.Anthropic(base_url=gw.public_url, api_key=KEY, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as e:
        claude.messages.create(model="claude-test", max_tokens=100,
                               messages=[{"role": "user", "content": "too expensive"}])
    assert e.value.status_code == 429
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.body["error"]["code"] == "budget_exceeded"

    usage = requests.get(f"{gw.public_url}/v1/usage",
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert usage["object"] == "usage" and usage["user"] == "ann"
    assert usage["budget"]["period"] == "daily"
    assert usage["budget"]["spent_usd"] == pytest.approx(first_cost)
    assert [(r["model"], r["requests"], r["cost_usd"]) for r in usage["data"]] == [
        ("mock-echo", 1, pytest.approx(first_cost))]
