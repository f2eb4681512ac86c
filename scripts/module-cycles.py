#!/usr/bin/env python3
"""Import cycles between the modules of each crate (#24 point 4).

Reads every `.rs` file under CRATE/src, maps it to its module path (`edge/mod.rs` is `edge`,
`edge/route.rs` is `edge::route`), and draws an edge from a module to each module it names through a
`crate::…`, `super::…` or `self::…` path (in `use` items and inline alike) — to the longest module that
exists on that path. A module naming one of its own ancestors is no edge (a child may use what its parent
holds: the two are one unit), nor is naming itself. The strongly connected components with more than one
module are the cycles.

Exit 0 when every cycle found is listed in the allowance file (one cycle per line: `crate: a b c`, its
modules sorted) and every listed cycle still exists; else print what differs and exit 1. The allowance only
shrinks: a new cycle fails, and so does a listed one that is gone (delete its line).

With `--layers FILE`, each crate named in FILE is also checked for layering: a line
`crate: config < support < tls upstream < edge` orders the crate's top-level modules from the bottom up
(names on one rung share a layer), and a module may name modules of its own layer or below, never one
above it. Every top-level module of such a crate must be on a rung (a new room is placed on purpose);
the crate's root (`lib.rs`) is the entry point, above every rung.

Usage: module-cycles.py ALLOWANCE [--layers FILE] CRATE_DIR...
"""

import os
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def modules(src):
    """Module path (tuple) -> file."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            if rel in ("main.rs",) and os.path.exists(os.path.join(src, "lib.rs")):
                continue  # the binary's root is not the library's
            out[tuple(parts)] = os.path.join(root, f)
    return out


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def strip_tests(text):
    """Drops `#[cfg(test)] mod … { … }` blocks: tests may reach anywhere."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def resolve(mods, here, kind, rest):
    base = {"crate": (), "self": here, "super": here[:-1]}[kind]
    names = [p for p in rest.split("::") if p]
    # `super::super::x`
    while names and names[0] == "super":
        base = base[:-1]
        names = names[1:]
    best = None
    for n in range(len(names) + 1):
        cand = base + tuple(names[:n])
        if cand in mods:
            best = cand
    return best


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        with open(path, encoding="utf-8") as fh:
            text = strip_tests(strip_comments(fh.read()))
        refs = [(k, r) for k, r in PATH.findall(text)]
        for k, prefix, group in USE_GROUP.findall(text):
            for item in re.split(r",", group):
                item = item.strip().split(" as ")[0].strip()
                head = re.match(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*", item)
                if head:
                    refs.append((k, prefix + "::" + head.group(0)))
        for k, r in refs:
            t = resolve(mods, m, k, r)
            if t is None or t == m or m[: len(t)] == t:
                continue
            edges[m].add(t)
    return edges


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def read_layers(path):
    """crate name -> {top-level module: rung}."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.split("#")[0].strip()
            if not line:
                continue
            crate, _, spec = line.partition(":")
            rungs = [r.split() for r in spec.split("<")]
            if not crate.strip() or any(not r for r in rungs):
                sys.exit(f"{path}:{n}:1: expected `crate: a < b c < d`")
            out[crate.strip()] = {m: i for i, rung in enumerate(rungs) for m in rung}
    return out


def layer_violations(crate, edges, rungs):
    """Imports that climb: (from, to, from's rung, to's rung); and top-level modules on no rung."""
    tops = {m[0] for m in edges if m}
    unplaced = sorted(tops - set(rungs))
    out = []
    for m, targets in edges.items():
        if not m or m[0] not in rungs:
            continue
        for t in targets:
            if not t or t[0] not in rungs or t[0] == m[0]:
                continue
            if rungs[t[0]] > rungs[m[0]]:
                out.append((m, t))
    return unplaced, sorted(out)


def main():
    args = sys.argv[1:]
    layers = {}
    if "--layers" in args:
        i = args.index("--layers")
        layers = read_layers(args[i + 1])
        del args[i : i + 2]
    allowance, crates = args[0], args[1:]
    bad_layers = 0
    allowed = set()
    if os.path.exists(allowance):
        with open(allowance, encoding="utf-8") as fh:
            for line in fh:
                line = line.split("#")[0].strip()
                if line:
                    allowed.add(line)
    found = set()
    for c in crates:
        edges = graph(os.path.join(c, "src"))
        crate = os.path.basename(c.rstrip("/"))
        if crate in layers:
            unplaced, climbs = layer_violations(crate, edges, layers[crate])
            for m in unplaced:
                print(f"{crate}: top-level module `{m}` is on no rung of the layers file")
            for m, t in climbs:
                print(f"{crate}: `{name(m)}` names `{name(t)}`, a later layer ({m[0]} < {t[0]} is wrong way up)")
            bad_layers += len(unplaced) + len(climbs)
        for comp in sccs(edges):
            found.add(f"{os.path.basename(c.rstrip('/'))}: " + " ".join(sorted(name(m) for m in comp)))
    new = sorted(found - allowed)
    gone = sorted(allowed - found)
    for line in new:
        print(f"module cycle (new): {line}")
    for line in gone:
        print(f"module cycle gone (delete it from {allowance}): {line}")
    print(f"module cycles: {len(found)} found, {len(allowed)} allowed, {len(new)} new, {len(gone)} gone")
    if layers:
        print(f"layering: {bad_layers} violation(s)")
    return 1 if new or gone or bad_layers else 0


if __name__ == "__main__":
    sys.exit(main())
