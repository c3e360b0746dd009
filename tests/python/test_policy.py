"""Auth, RBAC, rate limits and audit through the OpenAI SDK: the exceptions a client sees."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import openai
import pytest
import requests

from conftest import sluice_bin

ALICE = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEalice"
NARROW = "sk-sluice-NARROWnarrowNARROWnarrowNARROWnarrowNARR"
LIMITED = "sk-sluice-LIMITEDlimitedLIMITEDlimitedLIMITEDlimi"


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def policy(tmp_audit: str) -> dict:
    return {
        "models": [
            {"name": "mock-echo", "upstream": "mock", "upstream_model": "echo"},
            {"name": "gpt-4o-mini", "upstream": "mock", "upstream_model": "echo"},
        ],
        "orgs": [{"name": "acme"}],
        "roles": [
            {"name": "analyst", "permissions": ["chat", "models:list", "agents:run"],
             "models": ["mock-*"], "agents": ["daily-*"]},
        ],
        "users": [{"name": "alice", "org": "acme", "role": "analyst"}],
        "keys": [
            {"id": "alice-key", "user": "alice", "sha256": sha(ALICE)},
            {"id": "alice-narrow", "user": "alice", "sha256": sha(NARROW), "models": ["nothing-*"]},
            {"id": "alice-limited", "user": "alice", "sha256": sha(LIMITED),
             "rate_limit": {"requests_per_minute": 2}},
        ],
        "rate_limit": {"backend": "local"},
        "audit": {"path": tmp_audit, "fsync": "interval"},
        "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "audit"}],
    }


@pytest.fixture
def gw(start_gateway, tmp_path):
    return start_gateway(policy(str(tmp_path / "audit.jsonl")))


def hello(client: openai.OpenAI, model: str = "mock-echo") -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello you"}])
    return r.choices[0].message.content


def test_a_valid_key_works_and_carries_rate_limit_headers(gw):
    client = gw.client(api_key=ALICE)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-echo", messages=[{"role": "user", "content": "hello you"}])
    assert raw.parse().choices[0].message.content == "hello you"
    assert raw.headers.get("x-request-id")
    # The user has no limit of its own and neither has the org: no bucket, no headers; the
    # limited key has one.
    raw = gw.client(api_key=LIMITED).chat.completions.with_raw_response.create(
        model="mock-echo", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"]


def test_missing_and_wrong_keys_raise_authentication_error(gw):
    # The SDK refuses to send without a key: a raw request shows the missing-key error.
    r = requests.post(f"{gw.base_url}/chat/completions", timeout=30,
                      json={"model": "mock-echo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    assert r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as e:
        hello(gw.client(api_key="sk-sluice-not-a-real-key"))
    assert e.value.code == "invalid_api_key"
    assert "sk-sluice-not-a-real-key" not in str(e.value.body)


def test_role_and_key_narrowing_raise_permission_denied(gw):
    with pytest.raises(openai.PermissionDeniedError) as e:
        hello(gw.client(api_key=ALICE), model="gpt-4o-mini")
    assert e.value.code == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError) as e:
        hello(gw.client(api_key=NARROW))
    assert e.value.code == "model_not_allowed"
    assert [m.id for m in gw.client(api_key=ALICE).models.list()] == ["mock-echo"]
    assert [m.id for m in gw.client(api_key=NARROW).models.list()] == []
    with pytest.raises(openai.NotFoundError):
        gw.client(api_key=ALICE).models.retrieve("gpt-4o-mini")


def test_rate_limit_raises_rate_limit_error_with_retry_after(gw):
    client = gw.client(api_key=LIMITED)
    hello(client)
    hello(client)
    with pytest.raises(openai.RateLimitError) as e:
        hello(client)
    assert e.value.code == "rate_limit_exceeded"
    retry_after = int(e.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60


def test_sdk_calls_are_audited_and_the_trail_verifies(gw, tmp_path):
    client = gw.client(api_key=ALICE)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-echo", messages=[{"role": "user", "content": "secret body text"}])
    rid = raw.headers["x-request-id"]
    with pytest.raises(openai.AuthenticationError):
        hello(gw.client(api_key="sk-sluice-wrong"))
    assert gw.stop() == 0
    log = tmp_path / "audit.jsonl"
    lines = log.read_text().splitlines()
    records = [json.loads(l) for l in lines]
    mine = [r for r in records if r["request_id"] == rid]
    assert len(mine) == 1 and mine[0]["outcome"] == "ok" and mine[0]["key_id"] == "alice-key"
    assert any(r["outcome"] == "denied_auth" for r in records)
    assert "secret body text" not in log.read_text()
    assert "sk-sluice" not in log.read_text()
    out = subprocess.run([str(sluice_bin()), "audit", "verify", str(log)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"ok: {len(records)} records" in out.stdout
    # Tampering is caught, and the bad line named.
    lines[0] = lines[0].replace('"status":200', '"status":299')
    log.write_text("\n".join(lines) + "\n")
    out = subprocess.run([str(sluice_bin()), "audit", "verify", str(log)], capture_output=True, text=True)
    assert out.returncode == 1
    assert ":1" in out.stderr


def test_async_agent_run_is_queued_then_completed(gw):
    r = requests.post(f"{gw.base_url}/agents/daily-scan/run",
                      headers={"Authorization": f"Bearer {ALICE}"},
                      json={"input": "later", "async": True}, timeout=30)
    assert r.status_code == 202
    run = r.json()
    assert run["status"] == "queued" and run["object"] == "agent.run"
    deadline = time.time() + 20
    while time.time() < deadline:
        got = requests.get(f"{gw.base_url}/agents/daily-scan/runs/{run['id']}",
                           headers={"Authorization": f"Bearer {ALICE}"}, timeout=30).json()
        if got["status"] in ("completed", "failed"):
            break
        time.sleep(0.05)
    assert got["status"] == "completed"
    assert got["output"] == "later"
