# Sourced by loadtest/heap.sh and loadtest/idle_rss.sh (with PY, BIN and WORK set): the upstream that
# idle connections are proxied to (loadtest/idle_conns.py: 200 to requests, 101 to WebSocket upgrades),
# a one-route gateway config in $WORK/gateway.toml on fresh ports (HTTP, ADMIN; the upstream's UP_PID),
# and wait_for.

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # FILE or port, seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if [ -e "$1" ] || { [[ "$1" =~ ^[0-9]+$ ]] && (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2; return 1
}

UP=$(free_port); HTTP=$(free_port); ADMIN=$(free_port)
"$PY" loadtest/idle_conns.py upstream "$UP" &
UP_PID=$!
cat > "$WORK/gateway.toml" <<CONF
[entrypoints]
http = "127.0.0.1:$HTTP"
admin = "127.0.0.1:$ADMIN"

[limits]
h2_idle_timeout = "10m"

[log]
access_log = false

[[upstreams]]
name = "u"
servers = ["127.0.0.1:$UP"]

[[routes]]
name = "r"
upstream = "u"
CONF
"$BIN" validate --config "$WORK/gateway.toml" >/dev/null
