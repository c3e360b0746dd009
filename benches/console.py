#!/usr/bin/env python3
"""Measures the console against a running gateway: sign in with a key, then N page loads of
Settings › API (session read from the store, the key list, the render) and of Usage (the audit
log's tail read and summed), and M key creations (CSRF check, the key API's code, a store write).

    python3 benches/console.py http://127.0.0.1:8080 sk-sluice-DEMOkey… [N] [M]

Prints the median and 95th percentile of each, in milliseconds, and the pages' sizes. Keys made
here stay in the store: run it against a throw-away gateway."""

from __future__ import annotations

import re
import statistics
import sys
import time

import requests


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = fn()
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (r.status_code, r.text[:200])
    return out


def report(name: str, ms: list[float]) -> None:
    p95 = sorted(ms)[int(len(ms) * 0.95) - 1]
    print(f"{name:<28} n={len(ms):<4} median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms")


def main() -> None:
    base, key = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    m = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    s = requests.Session()
    r = s.post(f"{base}/console/login", data={"key": key}, allow_redirects=False)
    assert r.status_code == 303, r.text
    page = s.get(f"{base}/console/api")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    print(f"{'/console/login (signed out)':<28} {len(requests.get(base + '/console/login').content):>7} bytes")
    for p in ["/console/api", "/console/models", "/console/usage",
              "/console/assets/console.css", "/console/assets/console.js"]:
        print(f"{p:<28} {len(s.get(base + p).content):>7} bytes")
    report("GET /console/api", timed(lambda: s.get(f"{base}/console/api"), n))
    report("GET /console/usage", timed(lambda: s.get(f"{base}/console/usage"), n))
    report("POST /console/api/keys", timed(
        lambda: s.post(f"{base}/console/api/keys", data={"csrf": token, "name": "bench"}), m))


if __name__ == "__main__":
    main()
