"""API keys made at runtime (SPEC §12) with the OpenAI SDK: a key made through the API works at
once, is narrowed as asked, survives `kill -9` (the default store is the SQLite file
`data/sluice.db` under the gateway's working directory) and is refused once revoked."""

from __future__ import annotations

import hashlib
import signal

import openai
import pytest
import requests

from conftest import HTTP_TIMEOUT_S

ALICE = "sk-sluice-" + "ALICEpyALICEpyALICEpyALICEpyALICEpyALICE"[:40]
ADMIN_TOKEN = "py-admin-token"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONFIG = {
    "server": {"admin_token_env": "SLUICE_ADMIN_TOKEN"},
    "models": [
        {"name": "mock-echo", "upstream": "mock", "upstream_model": "echo"},
        {"name": "mock-other", "upstream": "mock", "upstream_model": "echo"},
    ],
    "orgs": [{"name": "acme"}],
    "roles": [
        {
            "name": "dev",
            "permissions": ["chat", "models:list", "agents:run", "keys:manage"],
            "models": ["mock-*"],
            "agents": ["*"],
        }
    ],
    "users": [{"name": "alice", "org": "acme", "role": "dev"}],
    "keys": [{"id": "alice-key", "user": "alice", "sha256": sha(ALICE)}],
    "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "audit"}],
}

ENV = {"SLUICE_ADMIN_TOKEN": ADMIN_TOKEN}


def make_key(gw, body: dict) -> dict:
    r = requests.post(
        f"{gw.base_url}/keys",
        json=body,
        headers={"Authorization": f"Bearer {ALICE}"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 201, r.text
    return r.json()


def chat(client: openai.OpenAI) -> str:
    answer = client.chat.completions.create(
        model="mock-echo", messages=[{"role": "user", "content": "hello there"}]
    )
    return answer.choices[0].message.content


def test_the_sdk_uses_a_key_made_through_the_api_until_it_is_revoked(start_gateway):
    gw = start_gateway(CONFIG, env=ENV)
    made = make_key(gw, {"name": "laptop", "models": ["mock-echo"], "expires_in_days": 7})
    assert made["key"].startswith("sk-sluice-") and len(made["key"]) == 50
    client = gw.client(api_key=made["key"])
    assert chat(client) == "hello there"
    assert [m.id for m in client.models.list()] == ["mock-echo"], "narrowed as asked"
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="mock-other", messages=[{"role": "user", "content": "hi"}]
        )

    listed = requests.get(
        f"{gw.base_url}/keys", headers={"Authorization": f"Bearer {ALICE}"}, timeout=HTTP_TIMEOUT_S
    ).json()["data"]
    mine = {k["id"]: k for k in listed}
    assert mine["alice-key"]["source"] == "config"
    assert mine[made["id"]]["source"] == "store" and mine[made["id"]]["last_used"]
    assert all("key" not in k and "sha256" not in k for k in listed)

    r = requests.delete(
        f"{gw.base_url}/keys/{made['id']}",
        headers={"Authorization": f"Bearer {ALICE}"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 200, r.text
    with pytest.raises(openai.AuthenticationError):
        chat(client)


def test_keys_survive_kill_9(start_gateway):
    gw = start_gateway(CONFIG, env=ENV)
    made = make_key(gw, {"name": "durable"})
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(timeout=10)
    gw.start()  # same working directory, so the same data/sluice.db
    assert chat(gw.client(api_key=made["key"])) == "hello there"


def test_the_admin_api_makes_and_disables_keys_for_any_user(start_gateway):
    gw = start_gateway(CONFIG, env=ENV)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = requests.post(
        f"{gw.admin_url}/admin/v1/keys",
        json={"user": "alice", "name": "ci"},
        headers={**auth, "Origin": "http://evil.example"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    r = requests.post(
        f"{gw.admin_url}/admin/v1/keys",
        json={"user": "alice", "name": "ci"},
        headers=auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 201, r.text
    made = r.json()
    client = gw.client(api_key=made["key"])
    assert chat(client) == "hello there"
    r = requests.put(
        f"{gw.admin_url}/admin/v1/keys/{made['id']}",
        json={"disabled": True},
        headers=auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 200 and r.json()["disabled"] is True
    with pytest.raises(openai.AuthenticationError):
        chat(client)
