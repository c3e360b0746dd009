#!/usr/bin/env python3
"""Summarises callgrind dumps for `MODE=callgrind benches/overhead.sh`.

Per target (one JSON line): instructions per request in user space, all threads, split into
Sluice's own proxy hooks (src/proxy.rs, filters included), the audit writer thread, the
allocator (mimalloc, or glibc's in older builds; self cost, wherever it is called from), and the rest (Pingora, tokio, std). With
--report: the markdown table, the per-filter steps, and the heaviest functions of the last target.

Callgrind counts instructions, not time: a syscall counts as the few instructions that enter
it, and the kernel's work (the loopback TCP stack, wake-ups) is not in these figures at all.
"""

import argparse
import json
import re
import sys

HOOKS = (
    "request_filter",
    "upstream_peer",
    "upstream_request_filter",
    "request_body_filter",
    "upstream_response_filter",
    "response_filter",
    "response_body_filter",
    "fail_to_proxy",
    "logging",
)
LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)(?: \[[^\]]*\])?$")


def entries(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                m = LINE.match(line)
                if m and "PROGRAM TOTALS" not in line:
                    out.append((int(m.group(1).replace(",", "")), m.group(2)))
    except OSError:
        pass
    return out


def summarise(a):
    inc = entries(a.inclusive)
    slf = entries(a.self)
    n = a.requests
    hooks = 0
    for h in HOOKS:
        pat = re.compile(
            r"<sluice::proxy::SluiceProxy as pingora_proxy::proxy_trait::ProxyHttp>::" + h + r"(::\{\{closure\}\})?$"
        )
        hooks += max([c for c, name in inc if pat.search(name)], default=0)
    # The writer thread's loop (`audit::writer::Worker::run`, since moved to `writer/worker.rs`).
    worker = re.compile(r"sluice_filters::audit::writer(::worker)?::Worker::run$")
    audit = max([c for c, name in inc if worker.search(name)], default=0)
    # The allocator's own functions: mimalloc's (`mi_*`, `_mi_*`; Sluice's global allocator) or,
    # in an older build, glibc's.
    alloc = sum(
        c
        for c, name in slf
        if "malloc/" in name.split(":")[0]
        or name.endswith(":free")
        or re.match(r"\?\?\?:_?mi_", name)
    )
    top = [
        (c / n, name.split(":", 1)[1] if name.startswith("???:") else name)
        for c, name in inc
        if re.search(r"sluice|serde_json|sha2|aho_corasick|regex", name) and "'" not in name
    ][:40]
    print(json.dumps({
        "name": a.name,
        "label": a.label,
        "per_request": a.total / n,
        "hooks": hooks / n,
        "audit": audit / n,
        "alloc": alloc / n,
        "top": top,
    }))


def k(x):
    return f"{x / 1000:,.1f} k"


def report(a):
    rows = [json.loads(l) for l in open(a.report) if l.strip()]
    out = [a.header, ""]
    w = out.append
    floor = next((r for r in rows if r.get("name") == "floor"), None)
    w("| | instructions / request | × the floor | Sluice's hooks (src/proxy.rs and the filters) | audit writer thread | the allocator: malloc/free (anywhere) | the rest: Pingora, tokio, std |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rest = r["per_request"] - r["hooks"] - r["audit"]
        x = f"{r['per_request'] / floor['per_request']:.2f}" if floor else "–"
        w(f"| {r['label']} | {k(r['per_request'])} | {x} | {k(r['hooks'])} | {k(r['audit'])} | {k(r['alloc'])} | {k(rest)} |")
    w("")
    if len(rows) > 1:
        w("| step | instructions / request |")
        w("|---|---:|")
        for p, r in zip(rows, rows[1:]):
            w(f"| {p['label'].replace('Sluice, ', '')} → {r['label'].replace('Sluice, ', '')} | "
              f"{(r['per_request'] - p['per_request']) / 1000:+,.1f} k |")
        w("")
    last = rows[-1]
    w(f"Heaviest Sluice, serde_json and hashing functions in the last row (inclusive, per request):")
    w("")
    seen = 0
    for c, name in last["top"]:
        if seen >= 15:
            break
        if re.search(r"tokio::|pingora_core::|core::ops::function", name):
            continue
        w(f"- {k(c)} `{name[:140]}`")
        seen += 1
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name")
    ap.add_argument("--label")
    ap.add_argument("--total", type=float)
    ap.add_argument("--requests", type=int)
    ap.add_argument("--inclusive")
    ap.add_argument("--self")
    ap.add_argument("--report")
    ap.add_argument("--header", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.report:
        report(a)
    else:
        summarise(a)


if __name__ == "__main__":
    main()
