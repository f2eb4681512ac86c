#!/usr/bin/env bash
# User-space instructions per HTTP/2 request of builds of the gateway, under callgrind, in alternation:
# `loadtest compare --instructions` does this for HTTP/1.1; here the generator is Debian's h2load
# (h2c with prior knowledge, 16 connections, one stream at a time each, as `compare` caps its
# connections at 16 under callgrind: more concurrency under valgrind meets the admission deadline)
# on the plain scenario's route.
#
#   loadtest/h2_instructions.sh ROUNDS REQUESTS NAME_A GATEWAY_A NAME_B GATEWAY_B
#
# Each run: the gateway under `valgrind --tool=callgrind --instr-atstart=no`, a warm-up of 2 000
# requests uninstrumented, instrumentation on for REQUESTS requests, off, a dump; the dump's total
# over the requests that succeeded (all must).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
ROUNDS=${1:?rounds}; REQUESTS=${2:?requests}
NAME_A=${3:?}; BIN_A=${4:?}; NAME_B=${5:?}; BIN_B=${6:?}
LOADTEST=${LOADTEST:-$CARGO_TARGET_DIR/release/loadtest}
ensure_debs nghttp2-client valgrind >&2
W=$(mktemp -d /tmp/aggios-h2instr.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

UP=127.0.0.1:18183; PROXY=127.0.0.1:18184; ADMIN=127.0.0.1:18194
"$LOADTEST" upstream --listen "$UP" > /dev/null & PIDS+=($!)
"$LOADTEST" gateway-config --scenario plain --listen "$PROXY" --admin "$ADMIN" --upstream "$UP" > "$W/gateway.toml"
H2LOAD=(h2load -H ":authority: t1.bench.test" -c 16 -m 1)

one() { # NAME BIN -> instructions per request
  local name=$1 bin=$2 pid out=$W/$1.callgrind
  rm -f "$out" "$out".*
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" run --config "$W/gateway.toml" > /dev/null 2> "$W/$name.err" &
  pid=$!
  wait_port 127.0.0.1 "${PROXY##*:}" 120 || { echo "$name did not start under valgrind" >&2; return 1; }
  "${H2LOAD[@]}" -n 2000 "http://$PROXY/" > /dev/null
  callgrind_control -i on "$pid" > /dev/null
  "${H2LOAD[@]}" -n "$REQUESTS" "http://$PROXY/" > "$W/h2load.out"
  callgrind_control -i off "$pid" > /dev/null
  callgrind_control -d "$pid" > /dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local ok
  ok=$(awk '/^requests:/ { gsub(",", ""); print $8 }' "$W/h2load.out")
  [ "$ok" = "$REQUESTS" ] || { echo "$name: $ok of $REQUESTS requests succeeded" >&2; return 1; }
  awk -v n="$ok" '/^totals:/ { printf "%.0f\n", $2 / n; exit }' "$out.1"
}

echo "| build | instructions / HTTP/2 request (per round) |"
echo "|---|---|"
declare -A RESULTS
for r in $(seq 1 "$ROUNDS"); do
  for pair in "$NAME_A:$BIN_A" "$NAME_B:$BIN_B"; do
    name=${pair%%:*}
    RESULTS[$name]="${RESULTS[$name]:-} $(one "$name" "${pair#*:}")"
  done
done
for name in "$NAME_A" "$NAME_B"; do
  # shellcheck disable=SC2086
  echo "| $name | $(printf '%s\n' ${RESULTS[$name]} | paste -sd' ') |"
done
