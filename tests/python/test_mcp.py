"""MCP through Sluice with the official Python SDK (`mcp` 2.x) as client, against a real MCP
server (the SDK's own `MCPServer` over Streamable HTTP, tests/python/mcp_server.py): tools
listed per role, calls, a denied call, DLP block and redact in both directions, progress
streamed as SSE, one session across two gateway instances, and a dead server.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import closed_port, free_port

HERE = Path(__file__).resolve().parent
AGENT_KEY = "sk-sluice-PYmcpAGENTkeyPYmcpAGENTkeyPYmcpAGENT12"
SERVER_TOKEN = "py-mcp-server-token"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def mcp_server():
    """The real MCP server on a free loopback port; stopped at the end of the module."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "mcp_server.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("the MCP test server exited at start")
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the MCP test server did not start within 60 s")
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def config(mcp_port: int, audit: Path) -> dict[str, Any]:
    """The quick start's config (conftest's builder) with two MCP servers (one dead), a role
    that may call some of their tools, DLP with a redacted and a blocked rule, audit."""
    return {
        "server": {"threads": 2, "shutdown_grace_seconds": 5},
        "mcp_servers": [
            {
                "name": "tools",
                "url": f"http://127.0.0.1:{mcp_port}/mcp",
                "api_key_env": "PY_MCP_SERVER_TOKEN",
            },
            {"name": "dead", "url": f"http://127.0.0.1:{closed_port()}/mcp"},
        ],
        "orgs": [{"name": "acme"}],
        "roles": [
            {
                "name": "agent",
                "permissions": ["mcp"],
                "mcp": [
                    "tools:echo",
                    "tools:progress",
                    "tools:secret_row",
                    "tools:codename",
                    "tools:whoami",
                    "dead:*",
                ],
            }
        ],
        "users": [{"name": "ada", "org": "acme", "role": "agent"}],
        "keys": [{"id": "ada-agent", "user": "ada", "sha256": sha(AGENT_KEY)}],
        "dlp": {
            "packs": ["secrets", "pii"],
            "request_action": "block",
            "response_action": "redact",
            "rules": [
                {"name": "employee_id", "regex": "EMP-[0-9]{6}", "action": "redact"},
                {"name": "codename", "keywords": ["BLUEBIRD"], "action": "block"},
            ],
        },
        "audit": {"path": str(audit), "fsync": "always"},
        "filters": [{"type": t} for t in ("auth", "rate_limit", "dlp", "audit")],
    }


@pytest.fixture
def gateways(mcp_server, start_gateway, tmp_path):
    """Two gateway instances on one MCP server, each with its own audit trail."""
    env = {"PY_MCP_SERVER_TOKEN": SERVER_TOKEN}
    a = start_gateway(config(mcp_server, tmp_path / "a.jsonl"), env=env)
    b = start_gateway(config(mcp_server, tmp_path / "b.jsonl"), env=env)
    return a, b, tmp_path


def records(path: Path) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        text = path.read_text() if path.exists() else ""
        recs = [json.loads(l) for l in text.splitlines() if l.strip()]
        if recs or time.monotonic() > deadline:
            return recs
        time.sleep(0.05)


def http_client(*ports: int) -> httpx2.AsyncClient:
    """The SDK's HTTP client with the Sluice key; with several ports, each request goes to the
    next one (consecutive requests of one MCP session on different instances)."""
    headers = {"Authorization": f"Bearer {AGENT_KEY}", "Cookie": "client-cookie=never-forwarded"}
    if len(ports) < 2:
        return httpx2.AsyncClient(headers=headers, timeout=30)
    inner = httpx2.AsyncHTTPTransport()
    turn = {"n": 0}

    class Alternating(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request):
            request.url = request.url.copy_with(port=ports[turn["n"] % len(ports)])
            turn["n"] += 1
            return await inner.handle_async_request(request)

    return httpx2.AsyncClient(headers=headers, timeout=30, transport=Alternating())


async def with_session(url: str, client: httpx2.AsyncClient, body):
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


def run(url: str, body, *ports: int):
    return anyio.run(with_session, url, http_client(*ports), body)


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def test_tools_listed_called_and_denied(gateways):
    a, _, tmp = gateways
    url = f"{a.public_url}/mcp/tools"

    async def body(s: ClientSession):
        tools = sorted(t.name for t in (await s.list_tools()).tools)
        echoed = await s.call_tool("echo", {"text": "hello through sluice"})
        who = await s.call_tool("whoami", {})
        with pytest.raises(MCPError) as denied:
            await s.call_tool("admin_delete", {})
        return tools, echoed, who, denied.value

    tools, echoed, who, denied = run(url, body)
    assert tools == ["codename", "echo", "progress", "secret_row", "whoami"]
    assert text_of(echoed) == "hello through sluice"
    assert text_of(who) == f"authorization=Bearer {SERVER_TOKEN} cookie="
    assert denied.code == -32001
    assert denied.data["type"] == "permission_denied"

    recs = records(tmp / "a.jsonl")
    calls = [r for r in recs if r.get("mcp_method") == "tools/call"]
    assert [(r["tool"], r["outcome"]) for r in calls] == [
        ("echo", "ok"),
        ("whoami", "ok"),
        ("admin_delete", "denied_permission"),
    ]
    assert all(r["path"] == "/mcp/tools" and r["key_id"] == "ada-agent" for r in recs)
    assert {"initialize", "tools/list", "notifications/initialized"} <= {r.get("mcp_method") for r in recs}
    assert "hello through sluice" not in (tmp / "a.jsonl").read_text()


def test_dlp_both_directions_and_progress(gateways):
    a, _, tmp = gateways
    url = f"{a.public_url}/mcp/tools"
    seen_progress: list[tuple[float, str | None]] = []

    async def on_progress(progress, total, message):
        seen_progress.append((progress, message))

    async def body(s: ClientSession):
        with pytest.raises(MCPError) as blocked:
            await s.call_tool("echo", {"text": "my key AKIAIOSFODNN7EXAMPLE"})
        redacted = await s.call_tool("echo", {"text": "badge EMP-123456"})
        row = await s.call_tool("secret_row", {})
        code = await s.call_tool("codename", {})
        steps = await s.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
        return blocked.value, redacted, row, code, steps

    blocked, redacted, row, code, steps = run(url, body)
    assert blocked.data["type"] == "dlp_blocked"
    assert "AKIA" not in blocked.message
    # The server echoed what it received: the redacted argument.
    assert text_of(redacted) == "badge [REDACTED:employee_id]"
    assert "erin@example.com" not in text_of(row)
    assert "[REDACTED:email]" in text_of(row)
    assert row.structured_content["owner"] == "[REDACTED:email]"
    assert code.is_error is True
    assert "BLUEBIRD" not in text_of(code)
    assert text_of(steps) == "did 3 steps"
    assert [p for p, _ in seen_progress] == [1, 2, 3]

    trail = (tmp / "a.jsonl").read_text()
    for secret in ("AKIA", "EMP-123456", "erin@example.com", "BLUEBIRD"):
        assert secret not in trail
    outcomes = [(r["tool"], r["outcome"]) for r in records(tmp / "a.jsonl") if r.get("mcp_method") == "tools/call"]
    assert outcomes[0] == ("echo", "dlp_blocked")
    assert ("codename", "dlp_blocked") in outcomes


def test_one_session_across_two_instances(gateways):
    a, b, tmp = gateways
    url = f"{a.public_url}/mcp/tools"

    async def body(s: ClientSession):
        out = []
        for i in range(4):
            out.append(text_of(await s.call_tool("echo", {"text": f"call {i}"})))
        return out

    assert run(url, body, a.port, b.port) == [f"call {i}" for i in range(4)]
    on_a = [r for r in records(tmp / "a.jsonl") if r.get("mcp_method") == "tools/call"]
    on_b = [r for r in records(tmp / "b.jsonl") if r.get("mcp_method") == "tools/call"]
    assert on_a and on_b, "both instances served calls of the one session"
    assert len(on_a) + len(on_b) == 4


def test_dead_server_is_a_clear_error_and_audited(gateways):
    a, _, tmp = gateways
    url = f"{a.public_url}/mcp/dead"

    async def body(s: ClientSession):
        return None

    with pytest.raises(BaseException) as failed:
        run(url, body)
    # SPEC §16: an HTTP-level 502 in section 3's shape, which the SDK reports as a JSON-RPC
    # internal error (its text is the SDK's own; the status and audit record say why).
    errors = failed.value.exceptions if isinstance(failed.value, BaseExceptionGroup) else [failed.value]
    while errors and isinstance(errors[0], BaseExceptionGroup):
        errors = errors[0].exceptions
    assert isinstance(errors[0], MCPError) and errors[0].code == -32603, repr(failed.value)
    recs = [r for r in records(tmp / "a.jsonl") if r["path"] == "/mcp/dead"]
    assert recs and recs[0]["outcome"] == "upstream_error" and recs[0]["status"] == 502
