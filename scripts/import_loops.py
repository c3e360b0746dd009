#!/usr/bin/env python3
"""Import loops between files of different concerns.

    python3 scripts/import_loops.py              # both crates
    python3 scripts/import_loops.py src          # one crate's source folder

Files are nodes; file A uses file B when A names an item of B's module (`use crate::x::y`,
`super::…`, `self::…`, or a path in code), resolved to the deepest module that exists. A
crate's top-level module (`crate::NAME`: `NAME.rs` or the folder `NAME/`) is a concern. A loop
is a group of files that reach each other through such uses; loops inside one concern (a
folder's `mod.rs` and its children) are the folder's own business and are not reported. Prints
every loop that spans concerns, with one path around it, and exits 1 when there is any.
"""
import os
import re
import sys


def module_files(root):
    """Module path (tuple) -> file."""
    mods = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            mods[tuple(parts)] = os.path.join(dirpath, f)
    return mods


def clean(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = "\n".join(l.split("//")[0] for l in text.splitlines())
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    # A `#[cfg(test)] mod tests { … }` is the tests', not the module's design.
    return re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)[0]


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = tree.strip()
    depth, i = 0, 0
    for i, ch in enumerate(tree):
        if ch == "{" and depth == 0:
            prefix = tree[:i]
            inner = tree[i + 1 : tree.rindex("}")]
            parts, depth2, start = [], 0, 0
            for j, c in enumerate(inner):
                if c == "{":
                    depth2 += 1
                elif c == "}":
                    depth2 -= 1
                elif c == "," and depth2 == 0:
                    parts.append(inner[start:j])
                    start = j + 1
            parts.append(inner[start:])
            out = []
            for p in parts:
                if p.strip():
                    out += [prefix + x for x in expand(p)]
            return out
    return [re.sub(r"\s+as\s+\w+$", "", tree)]


def paths_in(text):
    out = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        out += [p.replace(" ", "").replace("\n", "") for p in expand(m.group(1))]
    out += re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", text)
    return out


def resolve(path, here, mods):
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super" and base:
                base.pop()
            segs = segs[1:]
    else:
        return None
    full = base + segs
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return None


def graph_of(root):
    mods = module_files(root)
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        text = clean(open(path, encoding="utf-8").read())
        for p in paths_in(text):
            target = resolve(p, mod, mods)
            if target is not None and target != mod and target != ():
                graph[mod].add(target)
    return graph


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def cycle_through(graph, comp):
    members = set(comp)
    # Start at a file whose concern differs from one of its neighbours in the loop.
    start = next((v for v in comp for w in graph[v] if w in members and w[:1] != v[:1]), comp[0])
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def name(m):
    return "::".join(m) or "crate"


def main():
    roots = sys.argv[1:] or ["src", "filters/src"]
    found = False
    for root in roots:
        graph = graph_of(root)
        loops = [c for c in sccs(graph) if len({m[:1] for m in c}) > 1]
        print(f"{root}: {len(graph)} files, {len(loops)} import loop(s) across concerns")
        for comp in loops:
            found = True
            concerns = sorted({m[0] for m in comp if m})
            print(f"  {len(comp)} files of {', '.join(concerns)}")
            print(f"    e.g. {' -> '.join(name(m) for m in cycle_through(graph, comp))}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
