#!/usr/bin/env bash
# Soak: scripts/soak.sh [MINUTES] (default 30). Starts the stack (scripts/stack.sh), drives mixed traffic
# through the gateway (plain, JWT, rate-limited bursts, uploads with read-back and delete, logins) and
# samples the gateway's and the backend's RSS and open file descriptors every 10 s. Prints, and writes to
# .stack/soak-*.txt: RSS growth after a warm-up of a sixth of the run (at most 5 min), descriptor range,
# and every status by kind with the unexpected ones counted. Not part of CI: figures go to the README.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
STATE=.stack
mkdir -p "$STATE"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if curl -fsS -o /dev/null http://127.0.0.1:8080/healthz -H 'Host: 127.0.0.1' 2>/dev/null; then
  log "a stack is already running on :8080; soaking it"
  STACK_PID=""
else
  log "starting the stack (scripts/stack.sh)"
  bash scripts/stack.sh > "$STATE/soak-stack.log" 2>&1 &
  STACK_PID=$!
  trap '[ -n "$STACK_PID" ] && kill "$STACK_PID" 2>/dev/null; wait 2>/dev/null || true' EXIT INT TERM
  for _ in $(seq 1 1800); do
    curl -fsS -o /dev/null http://127.0.0.1:8080/healthz -H 'Host: 127.0.0.1' 2>/dev/null && break
    kill -0 "$STACK_PID" 2>/dev/null || { tail -20 "$STATE/soak-stack.log" >&2; exit 1; }
    sleep 1
  done
fi
GW_PID=$(pgrep -f 'release/gateway run' | head -1)
BE_PID=$(pgrep -f 'release/backend serve' | head -1)
[ -n "$GW_PID" ] && [ -n "$BE_PID" ] || { echo "gateway or backend process not found" >&2; exit 1; }
OUT="$STATE/soak-$(date -u +%Y%m%dT%H%M%SZ).txt"
log "soaking for $MINUTES min (gateway pid $GW_PID, backend pid $BE_PID); report in $OUT"
python3 scripts/soak.py --minutes "$MINUTES" --gateway-pid "$GW_PID" --backend-pid "$BE_PID" \
  --password "$(cat "$STATE/demo_password")" | tee "$OUT"
