"""What the MCP route adds to a tool call: the same `tools/call` sent N times straight to a real
MCP server (the Python SDK's MCPServer, tests/python/mcp_server.py, answering in SSE) and
through Sluice (`/mcp/tools`, the whole chain on: auth, rate_limit, dlp, audit), one after the
other (alternating) on keep-alive connections. Prints median and p90 latency of each and the difference.

    python3 benches/mcp_overhead.py [N]      # SLUICE_BIN defaults to target/debug/sluice
"""

import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-sluice-BENCHmcpBENCHmcpBENCHmcpBENCHmcpBENCH12"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not start")


def rpc(session: requests.Session, url: str, msg: dict, headers: dict) -> requests.Response:
    r = session.post(url, json=msg, headers=headers, timeout=30)
    r.raise_for_status()
    return r


def open_session(url: str, auth: dict):
    s = requests.Session()
    h = {"accept": "application/json, text/event-stream", **auth}
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
    r = rpc(s, url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, h)
    h["mcp-session-id"] = r.headers["mcp-session-id"]
    h["mcp-protocol-version"] = "2025-06-18"
    rpc(s, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
    return s, url, h


def timed_call(sess, i: int) -> float:
    s, url, h = sess
    msg = {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"text": f"call {i} with a few words of text"}}}
    t = time.perf_counter()
    r = rpc(s, url, msg, h)
    elapsed = time.perf_counter() - t
    assert f"call {i}" in r.text
    return elapsed


def measure(direct_url: str, via_url: str, auth: dict) -> tuple[list[float], list[float]]:
    """Calls alternate between the two paths, so a load change on the machine hits both."""
    a, b = open_session(direct_url, {}), open_session(via_url, auth)
    direct, via = [], []
    for i in range(N):
        direct.append(timed_call(a, i))
        via.append(timed_call(b, i))
    return direct, via


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1000:.2f} ms, p90 {xs[int(len(xs) * 0.9)] * 1000:.2f} ms"


def main() -> None:
    bin_ = os.environ.get("SLUICE_BIN", str(REPO / "target" / "debug" / "sluice"))
    mcp_port, listen, admin = port(), port(), port()
    work = Path(tempfile.mkdtemp(prefix="sluice-mcp-bench-"))
    server = subprocess.Popen([sys.executable, str(REPO / "tests/python/mcp_server.py"), str(mcp_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (work / "sluice.toml").write_text(f"""
[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
[[mcp_servers]]
name = "tools"
url = "http://127.0.0.1:{mcp_port}/mcp"
[[orgs]]
name = "o"
[[roles]]
name = "r"
permissions = ["mcp"]
mcp = ["tools:*"]
[[users]]
name = "u"
org = "o"
role = "r"
[[keys]]
id = "k"
user = "u"
sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
[dlp]
packs = ["secrets", "pii"]
[audit]
path = "{work / 'audit.jsonl'}"
[[filters]]
type = "auth"
[[filters]]
type = "rate_limit"
[[filters]]
type = "dlp"
[[filters]]
type = "audit"
""")
    gw = subprocess.Popen([bin_, "run", "-c", str(work / "sluice.toml")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: socket.create_connection(("127.0.0.1", mcp_port), 1).close() or True, "MCP server")
        wait(lambda: requests.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200, "Sluice")
        direct, via = measure(f"http://127.0.0.1:{mcp_port}/mcp", f"http://127.0.0.1:{listen}/mcp/tools",
                              {"authorization": f"Bearer {KEY}"})
        print(json.dumps({"calls": N, "binary": bin_}))
        print(f"direct:        {summary(direct)}")
        print(f"through Sluice: {summary(via)}")
        print(f"added (median): {(statistics.median(via) - statistics.median(direct)) * 1000:.2f} ms")
    finally:
        gw.terminate()
        server.terminate()
        gw.wait(10)
        server.wait(10)


if __name__ == "__main__":
    main()
