#!/usr/bin/env python3
"""Turns the raw results of benches/overhead.sh (JSON lines) into its markdown report.

Medians over the rounds. Every "added" figure and every ratio is first computed within a round
(target and reference measured at most a few minutes apart) and the median of those is shown.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def us(x, signed=False, nd=0):
    if x is None:
        return "–"
    return (f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}") + " µs"


def ms(x):
    return "–" if x is None else f"{x / 1000:.2f} ms"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def pct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--targets", required=True, help="JSON with the targets' labels, in order")
    ap.add_argument("--ttft-delay", default="?")
    for opt in ("date", "machine", "command", "settings", "build", "audit", "noise", "out"):
        ap.add_argument("--" + opt, default="")
    ap.add_argument("--syscalls-only", action="store_true")
    a = ap.parse_args()
    if a.syscalls_only:
        return syscalls_only(a)

    labels = json.load(open(a.targets))["labels"]
    order = list(labels)
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    by = defaultdict(dict)  # (kind, target) -> round -> row
    single = {}  # (kind, target) -> row
    for r in rows:
        if "run" in r:
            by[(r["kind"], r["target"])][r["run"]] = r
        else:
            single[(r["kind"], r["target"])] = r
    runs = sorted({r["run"] for r in rows if "run" in r})

    def series(kind, t, fn):
        return [fn(by[(kind, t)][k]) for k in runs if k in by[(kind, t)]]

    def diff(kind, t, ref, fn):
        """Median over the rounds of fn(t) - fn(ref), both from the same round."""
        out = []
        for k in runs:
            if k in by[(kind, t)] and k in by[(kind, ref)]:
                x, y = fn(by[(kind, t)][k]), fn(by[(kind, ref)][k])
                if x is not None and y is not None:
                    out.append(x - y)
        return med(out)

    def ratio(t, ref):
        out = []
        for k in runs:
            if k in by[("load", t)] and k in by[("load", ref)]:
                out.append(by[("load", t)][k]["wrk"]["rps"] / by[("load", ref)][k]["wrk"]["rps"])
        return med(out)

    def hist_mean(r):
        m0, m1 = r.get("m0") or {}, r.get("m1") or {}
        n = m1.get("count", 0) - m0.get("count", 0)
        return (m1.get("sum", 0) - m0.get("sum", 0)) / n * 1e6 if n > 0 else None

    cpu_req = lambda r: r["cpu_ns"] / 1000 / max(1, r["wrk"]["requests"])
    # CPU per streamed event; the run includes 3 warm-up streams.
    cpu_chunk = lambda r: r["cpu_ns"] / 1000 / ((r["res"]["streams"] + 3) * r["res"]["events_last"])
    c1_p50 = lambda r: r["wrk"]["p50_us"]
    c1_p99 = lambda r: r["wrk"]["p99_us"]
    ttft = lambda r: r["res"]["ttft_p50_us"]
    chunk = lambda r: r["res"]["chunk_p50_us"]

    fig = {}
    for t in order:
        proxy = t != "direct"
        d = fig[t] = {}
        d["rps"] = med(series("load", t, lambda r: r["wrk"]["rps"]))
        d["load_p50"] = med(series("load", t, lambda r: r["wrk"]["p50_us"]))
        d["load_p99"] = med(series("load", t, lambda r: r["wrk"]["p99_us"]))
        d["cpu_req"] = med(series("load", t, cpu_req)) if proxy else None
        d["c1_p50"] = med(series("c1", t, c1_p50))
        d["c1_p99"] = med(series("c1", t, c1_p99))
        d["add_p50"] = diff("c1", t, "direct", c1_p50) if proxy else None
        d["add_p99"] = diff("c1", t, "direct", c1_p99) if proxy else None
        d["hist"] = med(series("c1", t, hist_mean))
        d["streamed"] = bool(by[("stream", t)])
        # Time to first token from the run with spaced chunks (the back-to-back run's first
        # token waits for whatever else arrived in the same read).
        tk = "ttft" if by[("ttft", t)] else "stream"
        d["ttft"] = med(series(tk, t, ttft))
        d["chunk"] = med(series("stream", t, chunk))
        d["add_ttft"] = diff(tk, t, "direct", ttft) if proxy else None
        d["add_chunk"] = diff("stream", t, "direct", chunk) if proxy else None
        d["cpu_chunk"] = med(series("stream", t, cpu_chunk)) if proxy else None
        d["rss_start"] = single.get(("rss_start", t), {}).get("kib")
        d["rss_idle"] = single.get(("rss_idle", t), {}).get("kib")
        o = single.get(("open", t), {}).get("res")
        d["rss_open"] = o["rss_kib"].get(t) if o else None
        d["open_started"] = o["started"] if o else None
        d["open_metric"] = o.get("active_streams_metric") if o else None
        d["errors"] = sum(
            r["wrk"]["socket_errors"] + r["wrk"]["non2xx"]
            for kind in ("load", "c1")
            for r in by[(kind, t)].values()
        )

    out = []
    w = out.append
    w(f"Measured {a.date} on {a.machine}. Command: `{a.command}`. Build: {a.build}.")
    w("")
    w(f"Settings: {a.settings}. Conditions: {a.noise}.")
    w("")
    w("**Throughput and latency**: wrk, a ~1 KiB chat completion (not streamed), medians over the rounds.")
    w("")
    has_floor = "floor" in fig
    w("| | req/s, 64 conns | × floor | p50 | p99 | proxy CPU / request | p50, 1 conn | p99, 1 conn | added p50 | − floor's | added p99 | syscalls / request |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in order:
        d = fig[t]
        vs_floor = ratio(t, "floor") if has_floor and t != "direct" else None
        over_floor = diff("c1", t, "floor", c1_p50) if has_floor and t not in ("direct", "floor") else None
        sc = single.get(("syscalls", t))
        w(f"| {labels[t]} | {d['rps']:,.0f} | {'–' if vs_floor is None else f'{vs_floor:.2f}'} | "
          f"{ms(d['load_p50'])} | {ms(d['load_p99'])} | "
          f"{us(d['cpu_req'])} | {us(d['c1_p50'])} | {us(d['c1_p99'])} | "
          f"{us(d['add_p50'], True)} | {us(over_floor, True)} | {us(d['add_p99'], True)} | "
          f"{'–' if sc is None else format(sc['total'], '.2f')} |")
    w("")
    sys_rows = [t for t in order if ("syscalls", t) in single]
    if sys_rows:
        syscall_table(w, labels, [(t, single[("syscalls", t)]) for t in sys_rows])

    # Per filter: what each step of the chain adds to the one before it.
    chain = [t for t in order if t == "empty" or t.startswith("chain") or t == "full"]
    if len(chain) > 1:
        w("**What each filter adds** (each row: this chain minus the row above it, same round):")
        w("")
        w("| step | proxy CPU / request | added p50, 1 conn | req/s, 64 conns |")
        w("|---|---:|---:|---:|")
        for prev, t in zip(chain, chain[1:]):
            dc = diff("load", t, prev, cpu_req)
            dl = diff("c1", t, prev, c1_p50)
            rr = ratio(t, prev)
            step = labels[t].replace("Sluice, full chain: ", "").replace("Sluice, ", "")
            w(f"| {labels[prev].replace('Sluice, ', '')} → {step} | {us(dc, True)} | {us(dl, True)} | "
              f"{'–' if rr is None else f'{100 * (rr - 1):+.0f}%'} |")
        w("")

    streamed = [t for t in order if fig[t]["streamed"]]
    events = None
    for t in streamed:
        for r in by[("stream", t)].values():
            events = r["res"]["events_last"]
    ttft_events = None
    for t in streamed:
        for r in by[("ttft", t)].values():
            ttft_events = r["res"]["events_last"]
    w(f"**Streaming and memory.** Time to first token: a {CHUNKS(ttft_events)}-chunk completion whose "
      f"chunks the mock spaces as a model would ({a.ttft_delay} ms apart). Time per chunk: a "
      f"{CHUNKS(events)}-chunk completion the mock sends back to back, so that the proxy sets the "
      "pace; proxy CPU / chunk is its CPU time over that run divided by the events.")
    w("")
    w("| | time to first token | added | time per chunk | added | proxy CPU / chunk | RSS: start → idle after load | RSS, 1,000 open streams |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in streamed:
        d = fig[t]
        proxy = t != "direct"
        open_s = mib(d["rss_open"])
        if d["open_started"] is not None and d["rss_open"] is not None:
            open_s += f" ({d['open_started']} flowing)"
        w(f"| {labels[t]} | {us(d['ttft'])} | {us(d['add_ttft'], True)} | {us(d['chunk'], nd=1)} | "
          f"{us(d['add_chunk'], True, 1)} | {us(d['cpu_chunk'], nd=1)} | "
          f"{(mib(d['rss_start']) + ' → ' + mib(d['rss_idle'])) if proxy else '–'} | "
          f"{open_s if proxy else '–'} |")
    w("")

    full = fig.get("full")
    has_nginx = "nginx" in fig
    r_nginx = ratio("full", "nginx") if has_nginx else None
    r_empty = ratio("full", "empty")
    r_empty_nginx = ratio("empty", "nginx") if has_nginx else None
    w("Requests/s ratios (within each round, then the median): "
      f"full chain / nginx = {pct(r_nginx)}, full chain / empty chain = {pct(r_empty)}, "
      f"empty chain / nginx = {pct(r_empty_nginx)}.")
    w("")

    def goal(name, target, value, ok):
        mark = "–" if ok is None else ("met" if ok else "**missed**")
        w(f"| {name} | {target} | {value} | {mark} |")

    w("| goal (full chain) | target | measured | |")
    w("|---|---|---|---|")
    if has_floor:
        r = ratio("full", "floor")
        goal("requests/s vs the floor", "≥ 0.80 ×", "–" if r is None else f"{r:.2f} ×", None if r is None else r >= 0.8)
        r = ratio("empty", "floor")
        goal("empty chain's requests/s vs the floor", "≥ 0.95 ×", "–" if r is None else f"{r:.2f} ×", None if r is None else r >= 0.95)
        v = diff("c1", "full", "floor", c1_p50)
        goal("added p50, 1 connection, beyond the floor's", "≤ +10 µs", us(v, True), None if v is None else v <= 10)
        v = diff("stream", "full", "floor", chunk)
        goal("time per streamed chunk beyond the floor's", "≤ +5 µs", us(v, True, 1), None if v is None else v <= 5)
        sf, sl = single.get(("syscalls", "full")), single.get(("syscalls", "floor"))
        if sf and sl:
            v = sf["total"] - sl["total"]
            goal("syscalls per request beyond the floor's", "≤ +0.5", f"{v:+.2f}", v <= 0.5)
    v = full["add_p50"]
    goal("added p50 latency, 1 connection", "≤ 50 µs", us(v, True), None if v is None else v <= 50)
    if has_nginx:
        w(f"| for scale: what nginx doing nothing adds | ~15 µs | {us(fig['nginx']['add_p50'], True)} | |")
    goal("requests/s vs nginx", "≥ 80%", pct(r_nginx), None if r_nginx is None else r_nginx >= 0.8)
    goal("requests/s vs the empty chain", "≥ 90%", pct(r_empty), None if r_empty is None else r_empty >= 0.9)
    v = full["add_ttft"]
    goal("added time to first token", "≤ 1 ms", us(v, True), None if v is None else v <= 1000)
    v = full["add_chunk"]
    goal("added time per chunk", "≤ 10 µs", us(v, True, 1), None if v is None else v <= 10)
    v = full["rss_idle"]
    goal("RSS idle", "≤ 64 MiB", mib(v), None if v is None else v <= 64 * 1024)
    v = full["rss_open"]
    goal("RSS with 1,000 open streams", "≤ 256 MiB", mib(v), None if v is None else v <= 256 * 1024)
    w("")
    w("`sluice_overhead_seconds` (what Sluice adds to a request: from its head having been read to "
      "the end of the exchange, less the waits for the client's body, a new upstream connection "
      "and the upstream's answer; from its admin `/metrics`, the mean over exactly the "
      "1-connection requests) beside the added latency measured from outside. The difference is "
      "what no timer inside the process can see: the extra loopback hop (the kernel's work and "
      "the wake-ups on both sides), Pingora reading the request head before the first hook, and "
      "writing the request body and reading the response head, which fall inside the wait for "
      "the upstream. The last two columns compare each chain with the empty one.")
    w("")
    w("| | histogram mean | measured added p50 | difference | histogram vs empty chain | measured vs empty chain |")
    w("|---|---:|---:|---:|---:|---:|")
    base = fig.get("empty", {})
    for t in chain:
        d = fig[t]
        rest = None if d["hist"] is None or d["add_p50"] is None else d["add_p50"] - d["hist"]
        dh = dm = None
        if t != "empty" and base.get("hist") is not None and d["hist"] is not None:
            dh = d["hist"] - base["hist"]
        if t != "empty" and base.get("add_p50") is not None and d["add_p50"] is not None:
            dm = d["add_p50"] - base["add_p50"]
        w(f"| {labels[t]} | {us(d['hist'])} | {us(d['add_p50'], True)} | {us(rest, True)} "
          f"| {us(dh, True)} | {us(dm, True)} |")
    w("")
    notes = []
    for t in order:
        if fig[t]["errors"]:
            notes.append(f"{labels[t]}: {fig[t]['errors']} socket errors or non-2xx answers under wrk")
    for t in streamed:
        if fig[t]["open_metric"] is not None:
            notes.append(f"{labels[t]}: `sluice_active_streams` read {fig[t]['open_metric']:.0f} "
                         "while the streams were open")
    try:
        spacing = float(a.ttft_delay) * 1000
    except ValueError:
        spacing = None
    for t in streamed:
        v = fig[t]["add_ttft"]
        if spacing and v is not None and v > spacing / 2 and "dlp" in labels[t]:
            notes.append(
                f"{labels[t]}: the added time to first token is of the order of the spacing of the "
                f"chunks ({spacing:.0f} µs): the first token waited for the next chunk. DLP holds "
                "back the end of a delta that could be the start of a match until the next chunk "
                "shows it is not, so each token reaches the client one chunk late (with a model "
                "at 30 tokens/s, ~33 ms)")
    if a.audit:
        notes.append(a.audit)
    for n in notes:
        w(f"- {n}")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


SHOWN = ["sendto", "recvfrom", "write", "writev", "read", "futex", "epoll_wait", "clock_nanosleep"]


def syscall_table(w, labels, rows):
    if all(r.get("tool") == "perf" for _, r in rows):
        w("**System calls per request** (the kernel's `syscalls:sys_enter_*` tracepoints counted by "
          "`perf stat` on every thread of the proxy, over a fixed number of requests at full speed):")
    else:
        w("**System calls per request** (`strace -c -f` on every thread of the proxy, over a fixed "
          "number of requests; strace slows each call ~10x, so a time-batched audit writer makes "
          "smaller batches than it would at speed; only the counts mean anything):")
    w("")
    w("| | all | " + " | ".join(f"`{n}`" for n in SHOWN) + " | other |")
    w("|---|---:|" + "---:|" * (len(SHOWN) + 1))
    for t, r in rows:
        per = r["per_request"]
        other = sum(v for k, v in per.items() if k not in SHOWN)
        rest = ", ".join(f"{k} {v:.2f}" for k, v in per.items() if k not in SHOWN and v >= 0.05)
        w(f"| {labels.get(t, t)} | {r['total']:.2f} | "
          + " | ".join(f"{per.get(n, 0):.2f}" for n in SHOWN)
          + f" | {other:.2f}{f' ({rest})' if rest else ''} |")
    w("")


def syscalls_only(a):
    labels = json.load(open(a.targets))["labels"]
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    out = []
    w = out.append
    w(f"Measured {a.date}. Command: `{a.command}`. Build: {a.build}. Settings: {a.settings}.")
    w("")
    syscall_table(w, labels, [(r["target"], r) for r in rows])
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


def CHUNKS(events):
    # role chunk + one per word + finish chunk + [DONE]
    return "?" if events is None else events - 3


if __name__ == "__main__":
    main()
