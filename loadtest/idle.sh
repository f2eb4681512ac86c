#!/usr/bin/env bash
# Idle CPU (#31 point 6): the gateway with the dev config (config/dev.toml: its backend not running, so
# its health checks and key-set fetches fail on schedule) and nginx proxying to the same address, both
# serving no traffic, side by side for SECONDS; CPU time from every thread's schedstat (nanoseconds:
# /proc/PID/stat's 10 ms ticks are too coarse for an idle process), as seconds per hour.
#   loadtest/idle.sh [GATEWAY_BIN [SECONDS]]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/gateway}
SECS=${2:-120}
WORK=$(mktemp -d)
trap 'kill $GW_PID $NGINX_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

[ -s certs/dev.crt ] || "$BIN" certs dev --out certs --domain aggios.localhost --domain '*.aggios.localhost' \
  --domain localhost --domain 127.0.0.1 >/dev/null

# Every thread's time on CPU so far, in nanoseconds (all processes of a master/worker tree).
cpu_ns() {
  local total=0 pid t
  for pid in "$@"; do
    for t in /proc/"$pid"/task/*/schedstat; do
      [ -r "$t" ] && total=$((total + $(cut -d' ' -f1 "$t")))
    done
  done
  echo "$total"
}
tree() { echo "$1" $(pgrep -P "$1" || true); }

JWT_SECRET=idle-measure-secret-idle-measure-01 REDIS_URL=redis://127.0.0.1:6379 \
  "$BIN" run --config config/dev.toml > "$WORK/gateway.log" 2>&1 &
GW_PID=$!
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1; daemon off; error_log $WORK/nginx-error.log warn; pid $WORK/nginx.pid;
events { worker_connections 1024; }
http {
  client_body_temp_path $WORK/b; proxy_temp_path $WORK/p; access_log $WORK/access.log;
  upstream backend { server 127.0.0.1:8081; keepalive 64; }
  server { listen 127.0.0.1:18090; location / { proxy_pass http://backend; } }
}
CONF
/usr/sbin/nginx -c "$WORK/nginx.conf" &
NGINX_PID=$!
sleep 5
g0=$(cpu_ns $(tree $GW_PID)); n0=$(cpu_ns $(tree $NGINX_PID))
sleep "$SECS"
g1=$(cpu_ns $(tree $GW_PID)); n1=$(cpu_ns $(tree $NGINX_PID))
awk -v g=$((g1 - g0)) -v n=$((n1 - n0)) -v s="$SECS" 'BEGIN {
  printf "idle %d s: gateway %.3f CPU-s/hour, nginx %.3f CPU-s/hour\n", s, g / 1e9 * 3600 / s, n / 1e9 * 3600 / s
}'
