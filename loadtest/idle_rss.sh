#!/usr/bin/env bash
# RSS per idle connection by kind (#31 point 3): HTTP/1.1 kept alive after one request, HTTP/2 (h2c)
# after one request, an upgraded WebSocket proxied to an upstream (both sides in the gateway's RSS).
# For each kind a fresh gateway (the release build, its own allocator) gets BASE such connections
# (warm-up: arenas, pools and the first pages touched), then MORE again from a second client; the RSS
# growth over the second batch divided by MORE is one more idle connection. Repeated ROUNDS times per
# kind (median printed). `loadtest scale --parts idle` measures HTTP/1 against the peers; this script
# covers the kinds it does not.
#   loadtest/idle_rss.sh [GATEWAY_BIN [BASE [MORE [ROUNDS]]]]
# Prints one line per kind and round, then `KIND median KiB/connection`; KINDS="h2 ws" picks kinds.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/gateway}
BASE=${2:-500}
MORE=${3:-2000}
ROUNDS=${4:-3}
PY=${H2_PYTHON:-$HOME/.cache/aggios-edge/tools/bin/python}
"$PY" -c 'import hpack' 2>/dev/null || { source scripts/lib.sh; ensure_py_tools; PY=$H2_PYTHON; }
[ -x "$BIN" ] || { echo "no gateway binary at $BIN (cargo build --release -p gateway)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
GW_PID=""
trap 'kill $UP_PID 2>/dev/null || true; [ -n "$GW_PID" ] && kill -KILL "$GW_PID" 2>/dev/null; pkill -f "idle_conns.py clients --port $HTTP" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# shellcheck source=loadtest/idle_setup.sh
source loadtest/idle_setup.sh
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Opens N idle connections of KIND in the background; waits until they are all idle.
open_idle() { # KIND N TAG
  rm -f "$WORK/ready-$3"
  "$PY" loadtest/idle_conns.py clients --port "$HTTP" --kind "$1" --n "$2" \
    --ready "$WORK/ready-$3" --hold "$WORK/hold" &
  CLIENTS+=($!)
  wait_for "$WORK/ready-$3" 180
  # Let the last requests' tasks end and their buffers go.
  sleep 1
}

declare -A FIGURES
CLIENTS=()
for kind in ${KINDS:-h1 h2 ws}; do
  for round in $(seq 1 "$ROUNDS"); do
    rm -f "$WORK/hold"
    "$BIN" run --config "$WORK/gateway.toml" > "$WORK/gw.log" 2>&1 &
    GW_PID=$!
    wait_for "$HTTP" 60
    open_idle "$kind" "$BASE" base
    before=$(rss_kib "$GW_PID")
    open_idle "$kind" "$MORE" more
    after=$(rss_kib "$GW_PID")
    per=$(awk -v a="$after" -v b="$before" -v n="$MORE" 'BEGIN { printf "%.1f", (a - b) / n }')
    echo "$kind round $round: RSS ${before} KiB with $BASE, ${after} KiB with $((BASE + MORE)): $per KiB per connection"
    FIGURES[$kind]="${FIGURES[$kind]:-} $per"
    touch "$WORK/hold"
    for c in "${CLIENTS[@]}"; do wait "$c" 2>/dev/null || true; done
    CLIENTS=()
    kill -KILL "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
    GW_PID=""
  done
done
for kind in ${KINDS:-h1 h2 ws}; do
  # shellcheck disable=SC2086
  echo "$kind median $(printf '%s\n' ${FIGURES[$kind]} | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}') KiB/connection"
done
