"""Reads syscall counts into syscalls per request (benches/overhead.sh): a `perf stat -x,` run
over the `syscalls:sys_enter_*` tracepoints, or a `strace -c -f` summary.

  syscalls.py parse --tool perf|strace --target T --requests N FILE
      → one JSON line {"target", "kind": "syscalls", "tool", ...}
"""

import argparse
import json
import re
import sys

# A summary line: % time, seconds, usecs/call, calls, [errors], syscall
LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?([a-z_0-9]+)\s*$")


def parse_perf(path):
    """`perf stat -x,` lines: count,unit,event,… (`<not counted>` for an event that never ran)."""
    calls = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit() and f[2].startswith("syscalls:sys_enter_"):
            n = int(f[0])
            if n:
                name = f[2][len("syscalls:sys_enter_"):]
                calls[name] = calls.get(name, 0) + n
    return calls


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
    p.add_argument("--tool", choices=["perf", "strace"], default="strace")
    a = ap.parse_args()
    calls = parse_perf(a.file) if a.tool == "perf" else parse(a.file)
    if not calls:
        sys.exit(f"no {a.tool} counts in {a.file}")
    per = {k: v / a.requests for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
    print(json.dumps({"target": a.target, "kind": "syscalls", "tool": a.tool, "requests": a.requests,
                      "total": sum(per.values()), "per_request": per}))


if __name__ == "__main__":
    main()
