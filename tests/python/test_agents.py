"""Agent runs (SPEC §5) as they work today: `POST /v1/agents/{id}/run` through the engine to the
mock, which echoes the user message (the run's input)."""

from __future__ import annotations

import openai
import pytest
import requests

from conftest import HTTP_TIMEOUT_S

INSTRUCTIONS = "You are a security analyst. Summarise the findings."  # conftest's base config


def run(gw, body, **kw) -> requests.Response:
    return requests.post(
        f"{gw.base_url}/agents/daily-scan/run", json=body, timeout=HTTP_TIMEOUT_S, **kw
    )


def test_agent_run_completes_with_the_echoed_input(gateway):
    text = "three open ports found on host alpha"
    r = run(gateway, {"input": text})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers.get("x-request-id")
    out = r.json()
    assert out["object"] == "agent.run"
    assert out["status"] == "completed"
    assert out["agent_id"] == "daily-scan"
    assert out["output"] == text
    assert isinstance(out["id"], str) and out["id"].startswith("run_")
    assert isinstance(out["created"], int) and out["created"] > 1_600_000_000


def test_agent_run_sends_instructions_as_system_message(gateway):
    """The mock counts prompt words over every message: instructions + input."""
    text = "alpha beta gamma"
    out = run(gateway, {"input": text}).json()
    usage = out["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] == len(INSTRUCTIONS.split()) + 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_agent_run_ids_are_unique(gateway):
    a = run(gateway, {"input": "one"}).json()
    b = run(gateway, {"input": "two"}).json()
    assert a["id"] != b["id"]
    assert (a["output"], b["output"]) == ("one", "two")


def test_agent_run_with_the_sdk(gateway, client):
    out = client.post("/agents/daily-scan/run", body={"input": "scan done"}, cast_to=object)
    assert out["object"] == "agent.run"
    assert out["status"] == "completed"
    assert out["output"] == "scan done"


def test_agent_run_request_id_reaches_the_answer(gateway):
    r = run(gateway, {"input": "x"}, headers={"x-request-id": "agent-req-7"})
    assert r.headers.get("x-request-id") == "agent-req-7"


def test_unknown_agent_is_404(gateway, client):
    r = requests.post(
        f"{gateway.base_url}/agents/no-such-agent/run", json={"input": "hi"}, timeout=HTTP_TIMEOUT_S
    )
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == "agent_not_found"
    assert err["type"] == "invalid_request_error"
    assert "param" in err
    with pytest.raises(openai.NotFoundError) as ei:
        client.post("/agents/no-such-agent/run", body={"input": "hi"}, cast_to=object)
    assert ei.value.code == "agent_not_found"


@pytest.mark.parametrize(
    "body",
    [{}, {"input": ""}, {"input": None}, {"text": "wrong field"}, {"input": 42}],
    ids=["empty", "empty-string", "null", "wrong-field", "number"],
)
def test_agent_run_without_input_is_400(gateway, client, body):
    r = run(gateway, body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert isinstance(err["code"], str) and err["code"]
    assert "input" in err["message"]
    with pytest.raises(openai.BadRequestError):
        client.post("/agents/daily-scan/run", body=body, cast_to=object)


def test_agent_run_invalid_json_is_400(gateway):
    r = requests.post(
        f"{gateway.base_url}/agents/daily-scan/run",
        data=b"{not json",
        headers={"content-type": "application/json"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"


def test_agent_run_upstream_error_is_not_a_completed_run(gateway):
    """When the agent's upstream fails, the answer is an error, never `status: completed`."""
    r = run(gateway, {"input": "hello"}, headers={"x-mock-status": "503"})
    assert r.status_code == 503, r.text
    assert r.json().get("status") != "completed"
    assert "error" in r.json()


def test_agent_run_get_is_not_a_run(gateway):
    r = requests.get(f"{gateway.base_url}/agents/daily-scan/run", timeout=HTTP_TIMEOUT_S)
    assert r.status_code != 200 or r.json().get("object") != "agent.run"
