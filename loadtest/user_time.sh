#!/usr/bin/env bash
# User and system CPU time per request of two builds of the same proxy, in alternation: A B A B …
#
#   loadtest/user_time.sh ROUNDS DURATION NAME_A DIR_A NAME_B DIR_B
#
# DIR_* hold a `gateway` and a `bare_pingora` binary (release builds of two commits). Each round runs,
# for each build, bare Pingora and then the gateway (plain route, access log on) on CPU 0, loaded by
# `loadtest run` (64 keep-alive connections, 1 KiB answers) from CPU 1, and reads the proxy's utime and
# stime from /proc around the measured window. The user time is the part a change to user-space code can
# move; the system time (mostly loopback TCP) swings more and is printed beside it.
#
# PROTO=h2 measures the gateway alone over HTTP/2 (h2c, prior knowledge) with `h2load` (Debian's
# nghttp2-client) as the generator: 64 connections of 4 concurrent streams each.
#
# Why beside callgrind's instruction counts: valgrind counts each byte moved by a `rep movsb` copy as one
# instruction, so a large memcpy weighs far more in instructions than in time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
ROUNDS=${1:?rounds}; DURATION=${2:?duration, e.g. 10s}
NAME_A=${3:?}; DIR_A=${4:?}; NAME_B=${5:?}; DIR_B=${6:?}
PROTO=${PROTO:-h1}
if [ "$PROTO" = h2 ]; then ensure_debs nghttp2-client; KINDS="gateway"; else KINDS="bare gateway"; fi
LOADTEST=${LOADTEST:-$CARGO_TARGET_DIR/release/loadtest}
HZ=$(getconf CLK_TCK)
W=$(mktemp -d /tmp/aggios-usertime.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

UP=127.0.0.1:18181; PROXY=127.0.0.1:18182; ADMIN=127.0.0.1:18192
taskset -c 1 "$LOADTEST" upstream --listen "$UP" & PIDS+=($!)
"$LOADTEST" gateway-config --scenario plain --listen "$PROXY" --admin "$ADMIN" --upstream "$UP" > "$W/gateway.toml"

ticks() { # utime stime of $1
  awk '{ sub(/.*\) /, ""); split($0, f, " "); print f[12], f[13] }' "/proc/$1/stat"
}
one() { # NAME BUILD_DIR KIND
  local name=$1 dir=$2 kind=$3 pid
  if [ "$kind" = bare ]; then
    taskset -c 0 "$dir/bare_pingora" "$PROXY" "$UP" > /dev/null 2> "$W/$name-$kind.err" &
  else
    taskset -c 0 "$dir/gateway" run --config "$W/gateway.toml" > /dev/null 2> "$W/$name-$kind.err" &
  fi
  pid=$!
  wait_port 127.0.0.1 "${PROXY##*:}" 10 || { echo "the proxy did not start" >&2; return 1; }
  if [ "$PROTO" = h2 ]; then
    taskset -c 1 h2load -H ":authority: t1.bench.test" -c 64 -m 4 -D 2 "http://$PROXY/" > /dev/null   # warm-up
    read -r u0 s0 < <(ticks "$pid")
    taskset -c 1 h2load -H ":authority: t1.bench.test" -c 64 -m 4 -D "${DURATION%s}" "http://$PROXY/" > "$W/h2load.out"
    read -r u1 s1 < <(ticks "$pid")
    # "requests: N total, N started, N done, N succeeded, …": the answered ones, as JSON for below.
    awk '/^requests:/ { gsub(",", ""); print "{\"responses\": " $8 "}" }' "$W/h2load.out" > "$W/run.json"
  else
    taskset -c 1 "$LOADTEST" run --host t1.bench.test -c 64 -d 2s "http://$PROXY/" > /dev/null   # warm-up
    read -r u0 s0 < <(ticks "$pid")
    taskset -c 1 "$LOADTEST" run --host t1.bench.test -c 64 -d "$DURATION" --json "http://$PROXY/" > "$W/run.json"
    read -r u1 s1 < <(ticks "$pid")
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$W/run.json" "$name" "$kind" "$((u1 - u0))" "$((s1 - s0))" "$HZ" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
n = run.get("responses") or run["summary"]["responses"]
u, s, hz = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{n}\t{u / hz * 1e6 / n:.2f}\t{s / hz * 1e6 / n:.2f}")
PY
}
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  for pair in "$NAME_A:$DIR_A" "$NAME_B:$DIR_B"; do
    for kind in $KINDS; do one "${pair%%:*}" "${pair#*:}" "$kind"; done
  done
done > "$W/rows.tsv"
python3 - "$W/rows.tsv" "$NAME_A" "$NAME_B" "$ROUNDS" "$DURATION" "$PROTO" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, kind, n, u, s = line.split("\t")
    rows[(name, kind)].append((float(u), float(s), int(n)))
a, b = sys.argv[2], sys.argv[3]
proto = sys.argv[6]
load = "HTTP/2 (h2c), 64 connections × 4 streams (h2load)" if proto == "h2" else "64 keep-alive connections"
print(f"{sys.argv[4]} alternating rounds of {sys.argv[5]}, {load}, proxy on CPU 0; medians (per round)\n")
print("| proxy | build | user-µs / request | system-µs / request | requests per round |")
print("|---|---|---|---|---|")
for kind, label in [("bare", "bare Pingora"), ("gateway", "gateway, plain route")]:
    if not rows[(a, kind)]:
        continue
    for name in (a, b):
        r = rows[(name, kind)]
        us = ", ".join(f"{x[0]:.2f}" for x in r)
        print(f"| {label} | {name} | {statistics.median(x[0] for x in r):.2f} ({us}) | "
              f"{statistics.median(x[1] for x in r):.2f} | {statistics.median(x[2] for x in r):,} |")
    du = statistics.median(x[0] for x in rows[(a, kind)]) - statistics.median(x[0] for x in rows[(b, kind)])
    print(f"| {label} | {a} − {b} | {du:+.2f} | | |")
PY
