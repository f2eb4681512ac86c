#!/usr/bin/env python3
"""Attributes a proxy's CPU samples (folded stacks from inferno-collapse-perf) to who spent them.

Each sample goes to its owner: walking from the leaf towards the root, the first frame of ours (a
`gateway::` module), of Pingora or of tokio decides; std, libc, the allocator and the libraries they call
(http's header maps, httparse, parking_lot, …) are skipped on the way, so a header insert made by our proxy
module counts as ours, and one made by Pingora as Pingora's. A sample whose leaf is in the kernel is the
kernel's (syscalls: TCP, epoll), whoever asked. Samples owned by none of them go to the leaf-most library. Usage: attribute.py FOLDED CPU_US_PER_REQUEST TARGET
"""
import collections
import re
import sys

folded, cpu_us, target = sys.argv[1], float(sys.argv[2]), sys.argv[3]

GENERIC = re.compile(
    r"^(core::|alloc::|std::|<core::|<alloc::|<std::|__|_start|main$|memcpy|memmove|memset|memcmp|"
    r"\[unknown\]|_?mi_|mi_|malloc|free|realloc|calloc|clone3?$|start_thread|syscall$|__libc|__GI_|"
    r"hashbrown::|<hashbrown::|bytes::|<bytes::|smallvec::|<smallvec::|<&|<\[|<T as|<F as)"
)


def owner(frames):
    """frames: root first. Returns a component name."""
    leaf = frames[-1]
    if leaf.endswith("_[k]"):
        return "kernel (syscalls: TCP, epoll, …)"
    library = None
    for f in reversed(frames):
        name = f.removesuffix("_[k]")
        # `<gateway::edge::Gateway as pingora_proxy::ProxyHttp>::request_filter::{{closure}}` → gateway::edge
        m = re.match(r"^<?(?:&(?:mut )?)?([a-z_][a-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)?(?:::([a-z_][a-z0-9_]*))?", name)
        if not m:
            continue
        crate = m.group(1)
        if crate in ("core", "alloc", "std", "hashbrown", "bytes", "smallvec"):
            continue
        if crate == "gateway":
            mod = m.group(2) or ""
            sub = m.group(3) or ""
            if mod in ("edge", "proxy") and sub and sub[0].islower():
                return f"ours: gateway::{mod}::{sub}"
            return f"ours: gateway::{mod}"
        if crate.startswith("pingora"):
            return f"pingora ({crate})"
        if crate == "tokio":
            return "tokio (runtime, timers, I/O driver)"
        if library is None and crate not in ("mimalloc", "libmimalloc_sys"):
            library = crate
    if library:
        return f"library: {library}"
    if any(re.match(r"_?mi_|malloc|free|calloc|realloc", f) for f in frames[-3:]):
        return "allocator"
    if re.match(r"mem(cpy|move|set|cmp)", leaf):
        return "libc memory ops (caller unknown)"
    return "other (std, libc, unresolved)"


counts = collections.Counter()
total = 0
for line in open(folded):
    line = line.rstrip("\n")
    if not line:
        continue
    stack, _, n = line.rpartition(" ")
    n = int(n)
    frames = stack.split(";")
    counts[owner(frames)] += n
    total += n

# With the software clock, inferno weighs each sample by its period: nanoseconds of CPU.
print(f"**{target}**: {total / 1e9:.2f} s of sampled CPU (perf, software clock); {cpu_us:.1f} CPU-µs per request measured under perf.\n")
print("| component | share | CPU-µs / request |")
print("|---|---|---|")
ours = 0.0
for name, n in counts.most_common():
    share = n / total
    if name.startswith("ours"):
        ours += share
    print(f"| {name} | {share * 100:.1f} % | {share * cpu_us:.2f} |")
print(f"\nOur own code (all `ours:` rows): {ours * 100:.1f} % = {ours * cpu_us:.2f} CPU-µs per request.")
