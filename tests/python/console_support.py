"""Shared by the console tests: the config (two users, one with `console:admin`), key sign-in
with `requests`, the CSRF token of a page, the audit log."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import requests

from conftest import HTTP_TIMEOUT_S

ALICE = "sk-sluice-" + "ALICEconsoleALICEconsoleALICEconsoleALIC"[:40]
ROOT = "sk-sluice-" + "ROOTconsoleROOTconsoleROOTconsoleROOTcon"[:40]
NARROW = "sk-sluice-" + "NARROWconsoleNARROWconsoleNARROWconsole0"[:40]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONFIG = {
    "models": [
        {"name": "mock-echo", "upstream": "mock", "upstream_model": "echo"},
        {"name": "mock-other", "upstream": "mock", "upstream_model": "echo"},
    ],
    "orgs": [{"name": "acme"}],
    "roles": [
        {
            "name": "dev",
            "permissions": ["chat", "models:list", "keys:manage"],
            "models": ["mock-*"],
        },
        {
            "name": "admin",
            "permissions": ["chat", "models:list", "keys:manage", "console:admin"],
            "models": ["mock-*"],
        },
    ],
    "users": [
        {"name": "alice", "org": "acme", "role": "dev"},
        {"name": "root", "org": "acme", "role": "admin"},
    ],
    "keys": [
        {"id": "alice-key", "user": "alice", "sha256": sha(ALICE)},
        {"id": "root-key", "user": "root", "sha256": sha(ROOT)},
        {"id": "alice-narrow", "user": "alice", "sha256": sha(NARROW), "models": ["mock-echo"]},
    ],
    # DLP blocks secrets in requests: a pasted key would be refused if the console were scanned.
    "dlp": {"packs": ["secrets", "pii"], "request_action": "block", "response_action": "redact"},
    "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "dlp"}, {"type": "audit"}],
}

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in(gw, key: str) -> requests.Session:
    """A `requests` session signed in with `key` (its cookie jar holds the session cookie)."""
    s = requests.Session()
    r = s.post(
        f"{gw.public_url}/console/login",
        data={"key": key},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console/api"
    return s


def csrf_of(s: requests.Session, gw, page: str = "/console/api") -> str:
    r = s.get(f"{gw.public_url}{page}", allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    m = CSRF.search(r.text)
    assert m, r.text[:500]
    return m.group(1)


def audit_records(gw) -> list[dict]:
    path = Path(gw.workdir) / "audit" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_audit(gw, pred, timeout: float = 10.0) -> list[dict]:
    """Waits (bounded) until some audit record satisfies `pred`; returns those that do."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in audit_records(gw) if pred(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
