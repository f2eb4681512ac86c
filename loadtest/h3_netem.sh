#!/usr/bin/env bash
# HTTP/3 against HTTP/2 over a slow, lossy link (#29 point 7): the gateway and the harness's upstream in
# one network namespace, the page loader (`loadtest page`) in another, joined by a link emulated in user
# space (`loadtest/netem.py`: this kernel has no `tc netem`) with a one-way delay of RTT/2 and a loss rate
# applied to each direction. A page is 20 resources of ~27 KB (API JSON) requested at once over a new
# connection (TLS 1.3 + HTTP/2, or QUIC + HTTP/3); each protocol loads it LOADS times, in alternating
# halves, and the medians go to loadtest/results/h3-netem-CONGESTION.md. Needs root (ip netns).
# Usage: loadtest/h3_netem.sh [RTT_MS=50] [LOSS=0.02] [LOADS=20] [RESOURCES=20]
#        H3_CONGESTION=cubic|bbr picks the gateway's QUIC congestion controller ([h3] congestion).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
RTT_MS=${1:-50}; LOSS=${2:-0.02}; LOADS=${3:-20}; RESOURCES=${4:-20}
ensure_build_deps
ensure_debs iproute2
cargo build --release --locked -p gateway --bin gateway >&2
cargo build --release --locked -p loadtest --bin loadtest >&2
BIN="$CARGO_TARGET_DIR/release"
S=aggios-h3-srv C=aggios-h3-cli
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del "$S" 2>/dev/null || true; ip netns del "$C" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns del "$S" 2>/dev/null || true; ip netns del "$C" 2>/dev/null || true
ip netns add "$S"; ip netns add "$C"
ip -n "$S" link set lo up; ip -n "$C" link set lo up
python3 "$ROOT/loadtest/netem.py" "$S" tun-srv "$C" tun-cli --delay-ms "$(awk "BEGIN{print $RTT_MS/2}")" \
  --loss "$LOSS" > "$WORK/netem.out" 2> "$WORK/netem.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q ready "$WORK/netem.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$WORK/netem.out" || { cat "$WORK/netem.err" >&2; exit 1; }
ip -n "$S" addr add 10.77.0.1/24 dev tun-srv; ip -n "$S" link set tun-srv up
ip -n "$C" addr add 10.77.0.2/24 dev tun-cli; ip -n "$C" link set tun-cli up

"$BIN/gateway" certs dev --out "$WORK/certs" --domain '*.bench.test' > /dev/null
cat > "$WORK/gateway.toml" <<TOML
[server]
threads = 1
[entrypoints]
http = "10.77.0.1:8080"
https = "10.77.0.1:8443"
h3 = "10.77.0.1:8443"
admin = "127.0.0.1:9000"
[tenancy]
base_domains = ["bench.test"]
[log]
level = "warn"
[[upstreams]]
name = "origin"
servers = ["127.0.0.1:18081"]
[[routes]]
name = "page"
hosts = ["*.bench.test"]
upstream = "origin"
[tls]
certificates = [{ cert = "$WORK/certs/dev.crt", key = "$WORK/certs/dev.key" }]
[h3]
congestion = "${H3_CONGESTION:-bbr}"
TOML
ip netns exec "$S" "$BIN/loadtest" upstream --listen 127.0.0.1:18081 2> "$WORK/upstream.log" &
PIDS+=($!)
ip netns exec "$S" "$BIN/gateway" run --config "$WORK/gateway.toml" > "$WORK/access.log" 2> "$WORK/gateway.log" &
PIDS+=($!)
for _ in $(seq 100); do
  ip netns exec "$S" curl -sf http://127.0.0.1:9000/readyz > /dev/null 2>&1 && break; sleep 0.1
done
load() { # protocol loads
  ip netns exec "$C" "$BIN/loadtest" page --protocol "$1" --loads "$2" --resources "$RESOURCES" \
    --ca "$WORK/certs/dev-ca.crt" --host page.bench.test https://10.77.0.1:8443/
}
HALF=$(( (LOADS + 1) / 2 ))
H2A=$(load h2 "$HALF"); H3A=$(load h3 "$HALF"); H3B=$(load h3 "$HALF"); H2B=$(load h2 "$HALF")
echo "link: $(cat "$WORK/netem.err" 2>/dev/null)" >&2
python3 - "$RTT_MS" "$LOSS" "$RESOURCES" "$H2A" "$H2B" "$H3A" "$H3B" "${H3_CONGESTION:-bbr}" <<'PY'
import json, statistics, sys, datetime
rtt, loss, resources = sys.argv[1], float(sys.argv[2]), sys.argv[3]
h2 = [json.loads(a) for a in sys.argv[4:6]]; h3 = [json.loads(a) for a in sys.argv[6:8]]
cc = sys.argv[8]
def times(rs): return [t for r in rs for t in r["load_ms"]]
t2, t3 = times(h2), times(h3)
q = lambda xs, p: sorted(xs)[round((len(xs) - 1) * p)]
rows = [("HTTP/2 (TLS 1.3 over TCP, the kernel's cubic)", t2, h2[0]["bytes_per_load"]), (f"HTTP/3 (QUIC, {cc})", t3, h3[0]["bytes_per_load"])]
out = [f"# HTTP/3 against HTTP/2 on a lossy link ({datetime.date.today()})", "",
       f"`loadtest/h3_netem.sh {rtt} {loss} {len(t2)} {resources}`: {rtt} ms round trip, {loss*100:g} % loss each way "
       f"(user-space link, `loadtest/netem.py`), a page of {resources} resources requested at once on a new connection; "
       f"{len(t2)} loads per protocol in alternating halves.", "",
       "| protocol | median | p90 | min | max | bytes per page |", "|---|---|---|---|---|---|"]
for name, t, b in rows:
    out.append(f"| {name} | {statistics.median(t):.0f} ms | {q(t, 0.9):.0f} ms | {min(t):.0f} ms | {max(t):.0f} ms | {b} |")
out.append("")
out.append(f"HTTP/3 median / HTTP/2 median: **{statistics.median(t3) / statistics.median(t2):.2f}×**.")
text = "\n".join(out) + "\n"
open(f"loadtest/results/h3-netem-{cc}.md", "w").write(text)
print(text)
PY
