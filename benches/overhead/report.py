#!/usr/bin/env python3
"""Turns the raw results of benches/overhead.sh (JSON lines) into the markdown report.

Medians over the rounds; every "added" figure and every ratio is computed within a round
(target and reference measured minutes apart at most) and then the median of those is taken.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

NAMES = {
    "direct": "direct to the mock (no proxy)",
    "nginx": "nginx, plain reverse proxy",
    "empty": "Sluice, empty chain",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f_us(x, signed=False):
    if x is None:
        return "–"
    s = f"{x:+.0f}" if signed else f"{x:.0f}"
    return f"{s} µs"


def f_ms(x, signed=False):
    if x is None:
        return "–"
    return (f"{x / 1000:+.2f}" if signed else f"{x / 1000:.2f}") + " ms"


def f_mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def f_pct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--date", default="")
    ap.add_argument("--machine", default="")
    ap.add_argument("--command", default="benches/overhead.sh")
    ap.add_argument("--settings", default="")
    ap.add_argument("--build", default="")
    ap.add_argument("--full-label", default="Sluice, full chain")
    ap.add_argument("--nginx", default="")
    ap.add_argument("--audit", default="")
    ap.add_argument("--noise", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    names = dict(NAMES, full=a.full_label)
    if a.nginx:
        names["nginx"] = f"nginx {a.nginx}, plain reverse proxy"
    targets = [t for t in ("direct", "nginx", "empty", "full") if any(r["target"] == t for r in rows)]
    by = defaultdict(dict)  # (kind, target) -> run -> row
    single = {}  # (kind, target) -> row
    for r in rows:
        if "run" in r:
            by[(r["kind"], r["target"])][r["run"]] = r
        else:
            single[(r["kind"], r["target"])] = r
    runs = sorted({r["run"] for r in rows if "run" in r})

    def per_run(kind, t, fn):
        return [fn(by[(kind, t)][k]) for k in runs if k in by[(kind, t)]]

    def added(kind, t, fn):
        out = []
        for k in runs:
            if k in by[(kind, t)] and k in by[(kind, "direct")]:
                out.append(fn(by[(kind, t)][k]) - fn(by[(kind, "direct")][k]))
        return med(out)

    def ratio(t, ref):
        out = []
        for k in runs:
            if k in by[("load", t)] and k in by[("load", ref)]:
                out.append(by[("load", t)][k]["wrk"]["rps"] / by[("load", ref)][k]["wrk"]["rps"])
        return med(out)

    def hist_mean(r):
        m0, m1 = r.get("m0") or {}, r.get("m1") or {}
        dc = m1.get("count", 0) - m0.get("count", 0)
        return (m1.get("sum", 0) - m0.get("sum", 0)) / dc * 1e6 if dc > 0 else None

    def errors(t):
        return sum(
            r["wrk"]["socket_errors"] + r["wrk"]["non2xx"]
            for kind in ("load", "c1")
            for r in by[(kind, t)].values()
        )

    fig = {}
    for t in targets:
        d = fig[t] = {}
        d["rps"] = med(per_run("load", t, lambda r: r["wrk"]["rps"]))
        d["load_p50"] = med(per_run("load", t, lambda r: r["wrk"]["p50_us"]))
        d["load_p99"] = med(per_run("load", t, lambda r: r["wrk"]["p99_us"]))
        d["cpu_req"] = (
            med(per_run("load", t, lambda r: r["cpu_ns"] / 1000 / max(1, r["wrk"]["requests"])))
            if t != "direct" else None
        )
        d["c1_p50"] = med(per_run("c1", t, lambda r: r["wrk"]["p50_us"]))
        d["c1_p99"] = med(per_run("c1", t, lambda r: r["wrk"]["p99_us"]))
        d["add_p50"] = added("c1", t, lambda r: r["wrk"]["p50_us"]) if t != "direct" else None
        d["add_p99"] = added("c1", t, lambda r: r["wrk"]["p99_us"]) if t != "direct" else None
        d["hist"] = med(per_run("c1", t, hist_mean)) if t in ("empty", "full") else None
        d["ttft"] = med(per_run("stream", t, lambda r: r["res"]["ttft_p50_us"]))
        d["chunk"] = med(per_run("stream", t, lambda r: r["res"]["chunk_p50_us"]))
        d["add_ttft"] = added("stream", t, lambda r: r["res"]["ttft_p50_us"]) if t != "direct" else None
        d["add_chunk"] = added("stream", t, lambda r: r["res"]["chunk_p50_us"]) if t != "direct" else None
        d["cpu_chunk"] = (
            med(per_run("stream", t, lambda r: r["cpu_ns"] / 1000
                        / ((r["res"]["streams"] + 3) * r["res"]["events_last"])))
            if t != "direct" else None
        )
        d["rss_start"] = single.get(("rss_start", t), {}).get("kib")
        d["rss_idle"] = single.get(("rss_idle", t), {}).get("kib")
        o = single.get(("open", t), {}).get("res")
        d["rss_open"] = o["rss_kib"].get(t) if o else None
        d["open_started"] = o["started"] if o else None
        d["open_metric"] = o.get("active_streams_metric") if o else None
        d["errors"] = errors(t)

    out = []
    w = out.append
    w(f"Measured {a.date} on {a.machine}.")
    w("")
    w(f"Command: `{a.command}` — {a.settings}. Build: {a.build}. Conditions: {a.noise}.")
    w("")
    w("**Throughput and latency** (wrk, ~1 KiB chat body; medians over the rounds):")
    w("")
    w("| | req/s, 64 conns | p50 | p99 | proxy CPU / req | conc. 1 p50 | conc. 1 p99 | added p50 | added p99 |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        d = fig[t]
        w(f"| {names[t]} | {d['rps']:,.0f} | {f_ms(d['load_p50'])} | {f_ms(d['load_p99'])} | "
          f"{f_us(d['cpu_req'])} | {f_us(d['c1_p50'])} | {f_us(d['c1_p99'])} | "
          f"{f_us(d['add_p50'], True) if t != 'direct' else '–'} | "
          f"{f_us(d['add_p99'], True) if t != 'direct' else '–'} |")
    w("")
    w(f"**Streaming** (a {by[('stream', 'direct')][runs[0]]['res']['events_last'] - 3 if runs else '?'}-chunk "
      "streamed completion, chunks sent back to back by the mock) **and memory**:")
    w("")
    w("| | time to first token | added TTFT | time per chunk | added per chunk | proxy CPU / chunk | RSS idle (start → after load) | RSS, 1,000 open streams |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        d = fig[t]
        open_s = f_mib(d["rss_open"])
        if d["open_started"] is not None and d["rss_open"] is not None:
            open_s += f" ({d['open_started']} flowing)"
        add_chunk = "–" if d["add_chunk"] is None else f"{d['add_chunk']:+.1f} µs"
        cpu_chunk = "–" if d["cpu_chunk"] is None else f"{d['cpu_chunk']:.1f} µs"
        idle = "–" if t == "direct" else f"{f_mib(d['rss_start'])} → {f_mib(d['rss_idle'])}"
        w(f"| {names[t]} | {f_us(d['ttft'])} | {f_us(d['add_ttft'], True) if t != 'direct' else '–'} | "
          f"{d['chunk']:.1f} µs | {add_chunk} | {cpu_chunk} | {idle} | "
          f"{open_s if t != 'direct' else '–'} |")
    w("")

    # Ratios and goals.
    full, empty = fig.get("full"), fig.get("empty")
    r_nginx = ratio("full", "nginx") if "nginx" in fig else None
    r_empty = ratio("full", "empty")
    r_empty_nginx = ratio("empty", "nginx") if "nginx" in fig else None
    w("Ratios (within each round, then the median): "
      f"full chain / nginx = {f_pct(r_nginx)}, full chain / empty chain = {f_pct(r_empty)}, "
      f"empty chain / nginx = {f_pct(r_empty_nginx)}.")
    w("")

    def goal(name, ok, value, target):
        mark = "–" if ok is None else ("met" if ok else "**missed**")
        w(f"| {name} | {target} | {value} | {mark} |")

    w("| goal (full chain) | target | measured | |")
    w("|---|---|---|---|")
    ap50 = full["add_p50"]
    goal("added p50 latency, concurrency 1", None if ap50 is None else ap50 <= 50, f_us(ap50, True), "≤ 50 µs")
    if "nginx" in fig:
        w(f"| (nginx doing nothing adds) | ~15 µs | {f_us(fig['nginx']['add_p50'], True)} | |")
    goal("requests/s vs nginx", None if r_nginx is None else r_nginx >= 0.8, f_pct(r_nginx), "≥ 80%")
    goal("requests/s vs Sluice's empty chain", None if r_empty is None else r_empty >= 0.9, f_pct(r_empty), "≥ 90%")
    goal("added time to first token", None if full["add_ttft"] is None else full["add_ttft"] <= 1000,
         f_us(full["add_ttft"], True), "≤ 1 ms")
    ac = full["add_chunk"]
    goal("added time per chunk", None if ac is None else ac <= 10,
         "–" if ac is None else f"{ac:+.1f} µs (CPU {full['cpu_chunk']:.1f} µs)", "≤ 10 µs")
    goal("RSS idle", None if full["rss_idle"] is None else full["rss_idle"] <= 64 * 1024,
         f_mib(full["rss_idle"]), "≤ 64 MiB")
    goal("RSS with 1,000 open streams", None if full["rss_open"] is None else full["rss_open"] <= 256 * 1024,
         f_mib(full["rss_open"]), "≤ 256 MiB")
    w("")
    w("`sluice_overhead_seconds` (time inside Sluice's own code, from its admin `/metrics`, mean over "
      "exactly the concurrency-1 requests) next to the added latency measured from outside:")
    w("")
    w("| | histogram mean | measured added p50 | difference (the network hops and Pingora's own work the histogram does not time) |")
    w("|---|---:|---:|---:|")
    for t in ("empty", "full"):
        if t in fig:
            d = fig[t]
            diff = None if d["hist"] is None or d["add_p50"] is None else d["add_p50"] - d["hist"]
            w(f"| {names[t]} | {f_us(d['hist'])} | {f_us(d['add_p50'], True)} | {f_us(diff, True)} |")
    w("")
    notes = []
    for t in targets:
        if fig[t]["errors"]:
            notes.append(f"{names[t]}: {fig[t]['errors']} socket errors or non-2xx answers under wrk")
        if t in ("empty", "full") and fig[t]["open_metric"] is not None:
            notes.append(f"{names[t]}: sluice_active_streams read {fig[t]['open_metric']:.0f} during the open-streams run")
    if a.audit:
        notes.append(a.audit)
    for n in notes:
        w(f"- {n}")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
