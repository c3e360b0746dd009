"""Reads `strace -c -f` summaries into syscalls per request (benches/overhead.sh).

  syscalls.py parse --target T --requests N FILE   → one JSON line {"target", "kind": "syscalls", ...}
"""

import argparse
import json
import re
import sys

# A summary line: % time, seconds, usecs/call, calls, [errors], syscall
LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?([a-z_0-9]+)\s*$")


def parse(path):
    calls = {}
    for line in open(path):
        m = LINE.match(line)
        if m and m.group(3) != "total":
            calls[m.group(3)] = calls.get(m.group(3), 0) + int(m.group(1))
    return calls


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parse")
    p.add_argument("file")
    p.add_argument("--target", required=True)
    p.add_argument("--requests", type=int, required=True)
    a = ap.parse_args()
    calls = parse(a.file)
    if not calls:
        sys.exit(f"no strace summary in {a.file}")
    per = {k: v / a.requests for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
    print(json.dumps({"target": a.target, "kind": "syscalls", "requests": a.requests,
                      "total": sum(per.values()), "per_request": per}))


if __name__ == "__main__":
    main()
