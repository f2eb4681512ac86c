#!/usr/bin/env bash
# Heap per idle connection (#31 point 1): which allocations an idle client holds in the gateway, by
# call stack, with sizes. For each kind of idle connection — HTTP/1.1 kept alive after one request,
# HTTP/2 (h2c) after one request, an upgraded WebSocket (proxied: the upstream side included) — the
# gateway runs under heaptrack twice, with SMALL and with LARGE such connections open; it is killed
# while they are (what it holds then is what heaptrack reports as not freed), and the difference of
# the two runs, stack by stack, divided by LARGE - SMALL is what one more connection costs.
#   loadtest/heap.sh [GATEWAY_BIN [SMALL [LARGE]]]
# GATEWAY_BIN must be built with `--features system-alloc` (heaptrack sees malloc; mimalloc's own
# arenas would hide every allocation), e.g.
#   CARGO_TARGET_DIR=~/.cache/aggios-edge/prof-target cargo build --release -p gateway --features system-alloc
# Writes loadtest/results/heap/KIND.md (top stacks, bytes per connection) and prints the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-$HOME/.cache/aggios-edge/prof-target/release/gateway}
SMALL=${2:-200}
LARGE=${3:-1200}
PY=${H2_PYTHON:-$HOME/.cache/aggios-edge/tools/bin/python}
command -v heaptrack >/dev/null || { source scripts/lib.sh; ensure_debs heaptrack; }
"$PY" -c 'import hpack' 2>/dev/null || { source scripts/lib.sh; ensure_py_tools; PY=$H2_PYTHON; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
OUT=loadtest/results/heap
mkdir -p "$OUT"
trap 'kill $UP_PID 2>/dev/null || true; pkill -KILL -f "$WORK/gateway.toml" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# shellcheck source=loadtest/idle_setup.sh
source loadtest/idle_setup.sh

run() { # KIND N -> $WORK/KIND-N.stacks
  local kind=$1 n=$2 data="$WORK/$1-$2"
  heaptrack -o "$data" "$BIN" run --config "$WORK/gateway.toml" > "$WORK/$kind-$n.log" 2>&1 &
  local ht=$!
  wait_for "$HTTP" 60
  rm -f "$WORK/ready" "$WORK/hold"
  "$PY" loadtest/idle_conns.py clients --port "$HTTP" --kind "$kind" --n "$n" \
    --ready "$WORK/ready" --hold "$WORK/hold" &
  local cl=$!
  wait_for "$WORK/ready" 120
  # Let the last requests' tasks finish and their buffers go (a second is ages for that).
  sleep 1
  local gw
  gw=$(pgrep -f "run --config $WORK/gateway.toml" | grep -v "^$ht\$" | tail -1)
  kill -KILL "$gw"
  touch "$WORK/hold"
  wait "$cl" || true
  wait "$ht" || true
  local file
  file=$(ls "$data".zst "$data".gz 2>/dev/null | head -1 || true)
  heaptrack_print -f "$file" --flamegraph-cost-type leaked -F "$WORK/$kind-$n.stacks" >/dev/null
}

for kind in ${KINDS:-h1 h2 ws}; do
  run "$kind" "$SMALL"
  run "$kind" "$LARGE"
  "$PY" loadtest/heap_attribute.py "$WORK/$kind-$SMALL.stacks" "$WORK/$kind-$LARGE.stacks" \
    "$((LARGE - SMALL))" "$kind" > "$OUT/$kind.md"
  head -4 "$OUT/$kind.md" | tail -1
done
