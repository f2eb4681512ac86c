#!/usr/bin/env bash
# Where a proxy's CPU goes per request (#10): `perf record` on the software clock (these VMs have no hardware
# counters) with DWARF call graphs, while `loadtest run` drives the plain scenario's load (64 keep-alive
# connections, 1 KiB responses from the harness's upstream); the proxy on CPU 0, load and upstream on CPU 1.
# Writes loadtest/results/profile-<target>.svg (a flame graph, inferno) and profile-<target>.md (CPU-µs per
# request by component: the kernel, Pingora, tokio, our gateway's modules, the allocator, …).
# Usage: loadtest/profile.sh [gateway|bare-pingora|gateway-jwt-redis] [SECONDS]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
TARGET=${1:-gateway}
SECONDS_=${2:-10}
ensure_build_deps
ensure_debs linux-perf util-linux
command -v inferno-flamegraph >/dev/null || [ -x "$HOME/.cargo/bin/inferno-flamegraph" ] || cargo install inferno --locked >&2
export PATH="$HOME/.cargo/bin:$PATH"
[ "$TARGET" = gateway-jwt-redis ] && ensure_redis
cargo build --release --locked -p gateway --bin gateway --example bare_pingora >&2
cargo build --release --locked -p loadtest --bin loadtest >&2
BIN="$CARGO_TARGET_DIR/release"
W=$(mktemp -d /tmp/aggios-profile.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
UP=127.0.0.1:18181; PROXY=127.0.0.1:18183; ADMIN=127.0.0.1:18193
taskset -c 1 "$BIN/loadtest" upstream --listen "$UP" 2> "$W/upstream.log" & PIDS+=($!)
wait_port 127.0.0.1 18181 10 || die "upstream did not start"

HOST=acme.bench.test
HEADERS=()
# The comparison's own gateway configuration of a scenario (one benchmark config: `loadtest gateway-config`).
gw_toml() { "$BIN/loadtest" gateway-config --scenario "$1" --listen "$PROXY" --admin "$ADMIN" --upstream "$UP"; }
case "$TARGET" in
  gateway) gw_toml plain > "$W/gw.toml"; CMD=("$BIN/gateway" run --config "$W/gw.toml") ;;
  gateway-jwt-redis)
    export BENCH_JWT_SECRET=bench-secret-bench-secret-bench-secret-01 BENCH_REDIS_URL=redis://127.0.0.1:6379
    gw_toml tenant_jwt_ratelimit > "$W/gw.toml"
    TOKEN=$("$BIN/loadtest" token --secret "$BENCH_JWT_SECRET" --tenant acme)
    HEADERS=(-H "Authorization: Bearer $TOKEN")
    CMD=("$BIN/gateway" run --config "$W/gw.toml") ;;
  bare-pingora) CMD=("$BIN/examples/bare_pingora" "$PROXY" "$UP") ;;
  *) die "unknown target $TARGET (gateway, bare-pingora, gateway-jwt-redis)" ;;
esac
taskset -c 0 "${CMD[@]}" > "$W/proxy.out" 2> "$W/proxy.err" & PID=$!; PIDS+=($PID)
wait_port 127.0.0.1 18183 20 || die "$TARGET did not start: $(tail -3 "$W/proxy.err")"
taskset -c 1 "$BIN/loadtest" run "http://$PROXY/" --host "$HOST" "${HEADERS[@]}" -c 64 -d 3s > /dev/null # warm-up
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
T0=$(ticks)
perf record -e cpu-clock -F 1999 --call-graph dwarf,32768 -p "$PID" -o "$W/perf.data" -- sleep "$SECONDS_" 2> "$W/perf.log" &
PERF=$!
taskset -c 1 "$BIN/loadtest" run "http://$PROXY/" --host "$HOST" "${HEADERS[@]}" -c 64 -d "${SECONDS_}s" --json > "$W/load.json"
wait "$PERF" || true
T1=$(ticks)
REQS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['responses'])" "$W/load.json")
CPU_US=$(awk -v d=$((T1 - T0)) -v hz="$(getconf CLK_TCK)" -v n="$REQS" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
echo "$TARGET: $REQS requests, $CPU_US CPU-µs/request (perf running; perf's own cost included)" >&2
perf script -i "$W/perf.data" 2> /dev/null | inferno-collapse-perf --all > "$W/folded.txt"
OUT="$ROOT/loadtest/results"
mkdir -p "$OUT"
inferno-flamegraph --minwidth 1 --title "$TARGET: plain route, 64 keep-alive connections ($CPU_US CPU-µs/request)" \
  < "$W/folded.txt" > "$OUT/profile-$TARGET.svg"
python3 "$ROOT/loadtest/attribute.py" "$W/folded.txt" "$CPU_US" "$TARGET" > "$OUT/profile-$TARGET.md"
cat "$OUT/profile-$TARGET.md"
echo "flame graph: $OUT/profile-$TARGET.svg (raw: $W)" >&2
