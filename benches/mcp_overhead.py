"""What the MCP route adds to a tool call: the same `tools/call` sent N times straight to a real
MCP server (the Python SDK's MCPServer, tests/python/mcp_server.py, answering in SSE) and
through Sluice (`/mcp/tools`, the whole chain on: auth, rate_limit, dlp, audit) and through the
floor (benches/floor: Pingora forwarding only, when built), one after the other (alternating) on
keep-alive connections. Prints median and p90 latency of each and the differences.

    python3 benches/mcp_overhead.py [N]
    SLUICE_BIN=target/release/sluice FLOOR_BIN=target/release/examples/pingora_floor \
        python3 benches/mcp_overhead.py 2000
SLUICE_BIN defaults to target/debug/sluice; FLOOR_BIN to the release build's floor, if present
(`cargo build --release --example pingora_floor`); without it the floor row is left out.
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


def measure(paths: dict) -> dict:
    """Calls alternate between the paths, so a load change on the machine hits all of them."""
    sessions = {name: open_session(url, auth) for name, (url, auth) in paths.items()}
    times = {name: [] for name in paths}
    for i in range(N):
        for name, sess in sessions.items():
            times[name].append(timed_call(sess, i))
    return times


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1000:.2f} ms, p90 {xs[int(len(xs) * 0.9)] * 1000:.2f} ms"


def main() -> None:
    bin_ = os.environ.get("SLUICE_BIN", str(REPO / "target" / "debug" / "sluice"))
    floor_bin = os.environ.get("FLOOR_BIN", str(REPO / "target" / "release" / "examples" / "pingora_floor"))
    mcp_port, listen, admin, floor_port = port(), port(), port(), port()
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
    floor = None
    if os.access(floor_bin, os.X_OK):
        floor = subprocess.Popen([floor_bin, f"127.0.0.1:{floor_port}", f"127.0.0.1:{mcp_port}", "1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: socket.create_connection(("127.0.0.1", mcp_port), 1).close() or True, "MCP server")
        wait(lambda: requests.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200, "Sluice")
        paths = {"direct": (f"http://127.0.0.1:{mcp_port}/mcp", {})}
        if floor:
            wait(lambda: socket.create_connection(("127.0.0.1", floor_port), 1).close() or True, "floor")
            paths["floor"] = (f"http://127.0.0.1:{floor_port}/mcp", {})
        paths["sluice"] = (f"http://127.0.0.1:{listen}/mcp/tools", {"authorization": f"Bearer {KEY}"})
        t = measure(paths)
        med = {k: statistics.median(v) for k, v in t.items()}
        print(json.dumps({"calls": N, "binary": bin_, "floor": floor_bin if floor else None}))
        print(f"direct:         {summary(t['direct'])}")
        if floor:
            print(f"through the floor: {summary(t['floor'])}")
        print(f"through Sluice: {summary(t['sluice'])}")
        print(f"added by Sluice (median): {(med['sluice'] - med['direct']) * 1000:.3f} ms")
        if floor:
            print(f"added by the floor (median): {(med['floor'] - med['direct']) * 1000:.3f} ms")
            print(f"Sluice beyond the floor (median): {(med['sluice'] - med['floor']) * 1000:.3f} ms")
    finally:
        gw.terminate()
        server.terminate()
        if floor:
            floor.terminate()
            floor.wait(10)
        gw.wait(10)
        server.wait(10)


if __name__ == "__main__":
    main()
