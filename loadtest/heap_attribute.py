"""Bytes per idle connection by call stack, from two heaptrack "leaked" stack files (`heaptrack_print
--flamegraph-cost-type leaked -F`), taken with SMALL and LARGE connections open (`loadtest/heap.sh`).

    heap_attribute.py SMALL.stacks LARGE.stacks CONNECTIONS KIND > KIND.md

Each stack's bytes in the LARGE run less those in the SMALL run, over CONNECTIONS (LARGE - SMALL), is
what one more idle connection holds there. A stack is named by its allocation site: the innermost
frames that are not the allocator's or the standard library's plumbing.
"""

import collections
import sys

import re

# Frames that say nothing about what holds the memory: the allocator, the standard library's
# collections, the runtime's scheduling.
PLUMBING = (
    "alloc::", "core::", "std::", "hashbrown::", "__rust", "_R", "malloc", "calloc", "realloc",
    "posix_memalign", "clone3", "start_thread", "main", "tokio::runtime::", "pingora_runtime::",
    "<alloc::", "<core::", "<std::", "<hashbrown::", "0x",
)
ESCAPES = {
    "$LT$": "<", "$GT$": ">", "$u20$": " ", "$C$": ",", "$u7b$": "{", "$u7d$": "}", "$RF$": "&",
    "$BP$": "*", "$LP$": "(", "$RP$": ")", "$u5b$": "[", "$u5d$": "]", "$u27$": "'", "$SP$": "@",
}


def clean(frame):
    frame = re.sub(r" \(.*\)$", "", frame.strip())
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    for k, v in ESCAPES.items():
        frame = frame.replace(k, v)
    frame = frame.replace("..", "::")
    if frame.startswith("_<"):
        frame = frame[1:]
    return frame


def site(stack):
    """The allocation's owners: the distinct frames of our code and of the libraries doing the
    work (Pingora, h2, hyper, tokio's I/O, rustls, bytes), at most four, deepest last."""
    named = []
    for f in stack.split(";"):
        c = clean(f)
        if not c or c.startswith(PLUMBING) or c in named:
            continue
        named.append(c)
    return " → ".join(short(f) for f in named[-4:]) or "(runtime and standard library only)"


def short(frame):
    # Drop generic arguments, keep the path.
    out, depth = [], 0
    for ch in frame:
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<…>")
            continue
        if ch == ">":
            depth = max(0, depth - 1)
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out).replace("{{closure}}", "{closure}")[:120]


def load(path):
    totals = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, value = line.rstrip("\n").rpartition(" ")
            try:
                totals[stack] += int(value)
            except ValueError:
                continue
    return totals


def main():
    small, large, n, kind = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    by_site = collections.Counter()
    for stack in set(small) | set(large):
        delta = large[stack] - small[stack]
        if delta:
            by_site[site(stack)] += delta
    total = sum(by_site.values()) / n
    print(f"# Heap per idle connection: {kind}\n")
    print(f"{n} more idle connections, bytes still allocated per connection, by allocation site "
          f"(heaptrack, `loadtest/heap.sh`).\n")
    print(f"**{total / 1024:.1f} KiB per connection** in all (heap only: not stacks, not kernel "
          f"socket buffers).\n")
    print("| bytes / connection | held by (call path, outermost first) |")
    print("|---|---|")
    shown = 0
    for where, delta in by_site.most_common():
        per = delta / n
        if per < 8 or shown >= 40:
            break
        print(f"| {per:,.0f} | `{where}` |")
        shown += 1
    rest = sum(d for w, d in by_site.items()) / n - sum(
        d / n for _, d in by_site.most_common(shown))
    print(f"| {rest:,.0f} | (the rest) |")


if __name__ == "__main__":
    main()
