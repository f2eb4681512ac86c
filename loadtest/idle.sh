#!/usr/bin/env bash
# Idle CPU (#31 point 6): the gateway with the dev config (config/dev.toml: its backend not running, so
# its health checks and key-set fetches fail on schedule) and nginx proxying to the same address, both
# serving no traffic, side by side for SECONDS; CPU time from every thread's schedstat (nanoseconds:
# /proc/PID/stat's 10 ms ticks are too coarse for an idle process), as seconds per hour.
# With WARM=N, each first serves N requests (the dev routes answer 502 without the backend: the request
# path, its timers and the overload probe run all the same), so that what idle work traffic leaves
# behind is measured too. Per gateway thread: CPU time and times scheduled (schedstat's third field).
#   [WARM=N] loadtest/idle.sh [GATEWAY_BIN [SECONDS]]
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
if [ "${WARM:-0}" -gt 0 ]; then
  for port in 8080 18090; do
    urls=$(for _ in $(seq "$WARM"); do printf 'http://localhost:%s/healthz ' "$port"; done)
    # shellcheck disable=SC2086
    curl -s $urls > /dev/null || true
  done
  sleep 2
fi
# name, CPU ns, times scheduled of every gateway thread
threads() { for t in /proc/"$GW_PID"/task/*; do
  printf '%s\t%s\n' "$(tr ' ' '_' < "$t/comm")" "$(cut -d' ' -f1,3 "$t/schedstat")"; done | sort; }
threads > "$WORK/threads0"
g0=$(cpu_ns $(tree $GW_PID)); n0=$(cpu_ns $(tree $NGINX_PID))
sleep "$SECS"
g1=$(cpu_ns $(tree $GW_PID)); n1=$(cpu_ns $(tree $NGINX_PID))
threads > "$WORK/threads1"
# Per thread name (summed over threads of the same name): CPU ms and wake-ups per second.
join -t $'\t' "$WORK/threads0" "$WORK/threads1" 2>/dev/null | awk -F'\t' -v s="$SECS" '{
  split($2, a, " "); split($3, b, " "); cpu[$1] += b[1] - a[1]; runs[$1] += b[2] - a[2] }
  END { for (n in cpu) if (runs[n] > 0) printf "  %-20s %8.1f ms CPU  %7.2f wake-ups/s\n", n, cpu[n] / 1e6, runs[n] / s }' | sort -k2 -nr
awk -v g=$((g1 - g0)) -v n=$((n1 - n0)) -v s="$SECS" 'BEGIN {
  printf "idle %d s: gateway %.3f CPU-s/hour, nginx %.3f CPU-s/hour\n", s, g / 1e9 * 3600 / s, n / 1e9 * 3600 / s
}'
