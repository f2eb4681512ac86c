#!/usr/bin/env bash
# The gateway's own instruments for #10 (ablation, TLS, rate limit, multi-core), driven by wrk with the method
# of shared/BENCHMARKS.md. The peer comparison is `loadtest/compare.sh` (loadtest/instruments.sh wraps it).
#   wrk -t1 -c64 -d${DURATION}s --latency, HTTP/1.1 keep-alive, a 1 KiB 200 body from an nginx origin,
#   access log ON in every proxy, proxy pinned to CPU 0 with one worker thread, wrk and the origin on CPU 1.
#   CPU per request = the proxy's utime+stime during the run / requests served.
# Usage (PASSES default 3, DURATION default 10 s):
#        MODE=ratelimit loadtest/instruments.sh [PASSES] [DURATION]  the gateway with a global (Redis) rate limit on
#        every request against the same gateway without one, alternating (the limit is never reached, so
#        both serve 200s; the difference is the cost of deciding).
#        MODE=tls loadtest/instruments.sh [PASSES] [DURATION]  HTTPS: the gateway and nginx with the same ECDSA P-256
#        certificate (TLS 1.3), keep-alive and a new handshake per request (Connection: close), beside the
#        gateway's plain HTTP.
#        MODE=ablation loadtest/instruments.sh [PASSES] [DURATION]  where the gateway's cost goes (#10): bare Pingora,
#        then the gateway on a plain route with the access log off, on, default security headers, JWT + tenant
#        binding, and JWT + tenant binding + a global Redis limit; each row in CPU-µs per request (PASSES
#        alternating wrk passes) and in user-space instructions per request (one callgrind pass: exact, where
#        CPU time swings ±30 % on these VMs).
#        MODE=multicore loadtest/instruments.sh [PASSES] [DURATION]  both cores for everyone: nginx with 2 workers, the
#        gateway with threads = 2 as one service per thread with SO_REUSEPORT sockets and pools (default), as
#        one service whose two runtimes share a socket and a pool, and as one work-stealing pool; with the
#        share of upstream connections reused on another thread than the one that made them.
#        COUNT=1 adds the instruction counts to MODE=tls and MODE=ablation (COUNT=0 skips it in ablation).
# Instructions per request: the proxy runs under `valgrind --tool=callgrind --instr-atstart=no`; after an
#   uninstrumented warm-up, `callgrind_control -i on`, COUNT_SECONDS (default 12) of wrk -c16, `-i off`,
#   then a dump: the dump's instruction total / the requests wrk completed.
# Targets (everything on loopback): nginx, the gateway (10 routes; 10 000 tenant routes), and bare-pingora
# (gateway/examples/bare_pingora.rs: Pingora forwarding with no logic at all, the floor under the gateway).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/lib.sh"
PASSES=${1:-3}
DURATION=${2:-10}
CONNS=${CONNS:-64}
MODE=${MODE:-}
case "$MODE" in tls|ablation|multicore|ratelimit) ;; *)
  die "MODE must be tls, ablation, multicore or ratelimit (the peer comparison is loadtest/compare.sh)" ;; esac
ensure_build_deps
ensure_debs nginx-light wrk
if [ "$MODE" = ratelimit ] || [ "$MODE" = ablation ]; then ensure_redis; fi
COUNT=${COUNT:-$([ "$MODE" = ablation ] && echo 1 || echo 0)}
COUNT_SECONDS=${COUNT_SECONDS:-12}
if [ "$COUNT" = 1 ]; then command -v callgrind_control >/dev/null || ensure_debs valgrind; fi
export BENCH_REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# GW_BIN / BARE_BIN: measure given binaries (say, a build kept from before a change) instead of building.
if [ -z "${GW_BIN:-}" ] || [ -z "${BARE_BIN:-}" ]; then
  cargo build --release --locked -p gateway --bin gateway --example bare_pingora >&2
fi
# The token minter (`loadtest token`, the claims of `contracts`).
cargo build --release --locked -p loadtest --bin loadtest >&2
GW="${GW_BIN:-$CARGO_TARGET_DIR/release/gateway}"
BARE="${BARE_BIN:-$CARGO_TARGET_DIR/release/examples/bare_pingora}"

W=$(mktemp -d /tmp/aggios-bench.XXXXXX)
chmod 755 "$W"   # the nginx workers run unprivileged and must read the origin files
ORIGIN=127.0.0.1:18081; NGINX=127.0.0.1:18082; GWPORT=127.0.0.1:18083; GWADMIN=127.0.0.1:18093; BAREPORT=127.0.0.1:18084
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

mkdir -p "$W/origin" "$W/nginx"
head -c 1024 /dev/zero | tr '\0' 'a' > "$W/origin/index.html"
cat > "$W/origin.conf" <<NGX
worker_processes 1; daemon off; error_log $W/origin-error.log warn; pid $W/origin.pid;
events { worker_connections 4096; }
http { access_log off; server { listen $ORIGIN; keepalive_requests 1000000; location / { root $W/origin; index index.html; } } }
NGX
cat > "$W/nginx.conf" <<NGX
worker_processes 1; daemon off; error_log $W/nginx-error.log warn; pid $W/nginx.pid;
events { worker_connections 4096; }
http {
  log_format main '\$remote_addr [\$time_iso8601] "\$request" \$status \$body_bytes_sent \$request_time \$upstream_addr';
  access_log $W/nginx-access.log main;
  upstream origin { server $ORIGIN; keepalive 64; keepalive_requests 1000000; }
  server { listen $NGINX; keepalive_requests 1000000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX

gw_config() { # $1 = number of tenant routes, $2 = rate_limits of the tenant route (TOML list), $3 = extra TOML,
  #             $4 = more keys of the tenant route; ACCESS_LOG=false switches the access log off
  cat <<TOML
${3:-}
[server]
threads = 1
[entrypoints]
http = "$GWPORT"
admin = "$GWADMIN"
[tenancy]
base_domains = ["bench.test"]
[log]
access_log = ${ACCESS_LOG:-true}
format = "json"
level = "warn"
[[upstreams]]
name = "origin"
servers = ["$ORIGIN"]
health = { path = "/", interval = "2s", timeout = "1s" }
[[routes]]
name = "tenants"
hosts = ["*.bench.test"]
upstream = "origin"
rate_limits = ${2:-[]}
${4:-}
TOML
  for i in $(seq 1 "$1"); do printf '[[routes]]\nname = "t%d"\nhosts = ["t%d.bench.test"]\nupstream = "origin"\n' "$i" "$i"; done
}
gw_config 10 > "$W/gw10.toml"
# A global per-tenant policy far above what one core can serve: every request costs one Redis decision.
gw_config 10 '["per_tenant"]' '[redis]
url_env = "BENCH_REDIS_URL"
[rate_limits.per_tenant]
key = "tenant"
limit = 1000000
period = "1s"' > "$W/gwrl.toml"
for c in gw10 gwrl; do "$GW" validate --config "$W/$c.toml" >&2; done

taskset -c 1 nginx -c "$W/origin.conf" & PIDS+=($!)
wait_port 127.0.0.1 18081 10 || die "origin did not start"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

# run_one NAME CMD... — start the proxy on CPU 0, load it from CPU 1, print one TSV row.
run_one() {
  local name=$1 port=$2 host=$3; shift 3
  local scheme=${SCHEME:-http}
  local extra=(); [ -n "${WRK_HEADER:-}" ] && extra=(-H "$WRK_HEADER")
  [ -n "${WRK_HEADER2:-}" ] && extra+=(-H "$WRK_HEADER2")
  taskset -c "${PROXY_CPUS:-0}" "$@" > "$W/$name.stdout" 2> "$W/$name.stderr" &
  local pid=$!
  wait_port 127.0.0.1 "$port" 20 || die "$name did not start: $(tail -3 "$W/$name.stderr")"
  # For nginx the worker does the work; measure the whole process tree.
  sleep 1
  taskset -c "${LOAD_CPUS:-1}" wrk -t"${WRK_THREADS:-1}" -c"$CONNS" -d2s -H "Host: $host" "${extra[@]}" "$scheme://127.0.0.1:$port/" > /dev/null # warm-up
  local pids; pids=$(pgrep -P "$pid" || true); pids="$pid $pids"
  local before=0 after=0 p
  for p in $pids; do before=$((before + $(cpu_ticks "$p"))); done
  taskset -c "${LOAD_CPUS:-1}" wrk -t"${WRK_THREADS:-1}" -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $host" "${extra[@]}" "$scheme://127.0.0.1:$port/" > "$W/$name.wrk"
  for p in $pids; do after=$((after + $(cpu_ticks "$p"))); done
  local rss=0; for p in $pids; do rss=$((rss + $(rss_kb "$p"))); done
  # The gateway's own view of its decisions (did Redis answer every one?).
  curl -s --max-time 2 "http://$GWADMIN/metrics" 2>/dev/null \
    | grep -E '^gateway_(ratelimit|upstream_connections_total)' >> "$W/$name.metrics" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local reqs rps p99 non2xx
  reqs=$(awk '/requests in/ {print $1}' "$W/$name.wrk")
  rps=$(awk '/Requests\/sec/ {print $2}' "$W/$name.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$W/$name.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$W/$name.wrk"); non2xx=${non2xx:-0}
  local cpu_us; cpu_us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p99" "$cpu_us" "$((rss / 1024))" "$non2xx"
}

# count_one NAME PORT HOST CMD... — user-space instructions per request of the proxy CMD, exact, under
# callgrind: print one TSV row "NAME<TAB>instructions/request<TAB>requests counted".
count_one() {
  local name=$1 port=$2 host=$3; shift 3
  local scheme=${SCHEME:-http} out="$W/$name.callgrind"
  local extra=(); [ -n "${WRK_HEADER:-}" ] && extra=(-H "$WRK_HEADER")
  [ -n "${WRK_HEADER2:-}" ] && extra+=(-H "$WRK_HEADER2")
  taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
    > "$W/$name.cg.stdout" 2> "$W/$name.cg.stderr" &
  local pid=$!
  wait_port 127.0.0.1 "$port" 120 || die "$name did not start under valgrind: $(tail -3 "$W/$name.cg.stderr")"
  taskset -c 1 wrk -t1 -c16 -d3s -H "Host: $host" "${extra[@]}" "$scheme://127.0.0.1:$port/" > /dev/null # warm-up
  callgrind_control -i on "$pid" > /dev/null
  taskset -c 1 wrk -t1 -c16 -d"${COUNT_SECONDS}s" -H "Host: $host" "${extra[@]}" "$scheme://127.0.0.1:$port/" > "$W/$name.cg.wrk"
  callgrind_control -i off "$pid" > /dev/null
  callgrind_control -d "$pid" > /dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local reqs non2xx ir
  reqs=$(awk '/requests in/ {print $1}' "$W/$name.cg.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$W/$name.cg.wrk"); non2xx=${non2xx:-0}
  [ "$non2xx" = 0 ] || die "$name answered $non2xx non-2xx responses under callgrind"
  # The dump (out.1) holds the instrumented window only; its "totals:" line is the sum over every thread.
  ir=$(awk '/^totals:/ {print $2; exit}' "$out.1" 2>/dev/null || true)
  [ -n "$ir" ] || die "$name: no callgrind dump in $W"
  printf '%s\t%s\t%s\n' "$name" "$(( ir / reqs ))" "$reqs"
}

RESULTS="$W/results.tsv"
if [ "$MODE" = tls ]; then
  # One ECDSA P-256 certificate for both proxies (rcgen's default key type).
  "$GW" certs dev --out "$W/certs" --domain '*.bench.test' --domain bench.test >&2
  chmod 644 "$W/certs/dev.key"   # nginx reads it after dropping privileges (a throw-away key)
  cat > "$W/nginx-tls.conf" <<NGX
worker_processes 1; daemon off; error_log $W/nginx-tls-error.log warn; pid $W/nginx-tls.pid;
events { worker_connections 4096; }
http {
  log_format main '\$remote_addr [\$time_iso8601] "\$request" \$status \$body_bytes_sent \$request_time \$upstream_addr';
  access_log $W/nginx-tls-access.log main;
  upstream origin { server $ORIGIN; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18085 ssl; keepalive_requests 1000000;
    ssl_certificate $W/certs/dev.crt; ssl_certificate_key $W/certs/dev.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
  { gw_config 10; printf '[tls]\ncertificates = [{ cert = "%s", key = "%s", default = true }]\n' "$W/certs/dev.crt" "$W/certs/dev.key"; } \
    | sed "s|^admin = .*|&\nhttps = \"127.0.0.1:18086\"|" > "$W/gwtls.toml"
  "$GW" validate --config "$W/gwtls.toml" >&2
  for pass in $(seq 1 "$PASSES"); do
    echo "pass $pass/$PASSES" >&2
    run_one gateway-http 18083 t5.bench.test "$GW" run --config "$W/gwtls.toml" >> "$RESULTS"
    SCHEME=https run_one gateway-https 18086 t5.bench.test "$GW" run --config "$W/gwtls.toml" >> "$RESULTS"
    SCHEME=https run_one nginx-https 18085 t5.bench.test nginx -c "$W/nginx-tls.conf" >> "$RESULTS"
    SCHEME=https WRK_HEADER="Connection: close" run_one gateway-handshakes 18086 t5.bench.test "$GW" run --config "$W/gwtls.toml" >> "$RESULTS"
    SCHEME=https WRK_HEADER="Connection: close" run_one nginx-handshakes 18085 t5.bench.test nginx -c "$W/nginx-tls.conf" >> "$RESULTS"
  done
  if [ "$COUNT" = 1 ]; then
    echo "instruction counts (callgrind)" >&2
    count_one gateway-http 18083 t5.bench.test "$GW" run --config "$W/gwtls.toml" >> "$W/counts.tsv"
    SCHEME=https count_one gateway-https 18086 t5.bench.test "$GW" run --config "$W/gwtls.toml" >> "$W/counts.tsv"
    awk -F'\t' '{ ir[$1] = $2 } END { printf "instructions per request: plain HTTP %d, HTTPS keep-alive %d (%.2f×)\n", ir["gateway-http"], ir["gateway-https"], ir["gateway-https"] / ir["gateway-http"] }' "$W/counts.tsv"
  fi
  python3 - "$RESULTS" "$PASSES" "$DURATION" "$CONNS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, p99, cpu, rss, non2xx = line.rstrip("\n").split("\t")
    def ms(v):
        return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    rows[name].append((float(rps), ms(p99), float(cpu), int(rss), int(non2xx)))
med = lambda name, i: statistics.median(x[i] for x in rows[name])
print(f"passes={sys.argv[2]} duration={sys.argv[3]}s connections={sys.argv[4]} (medians)\n")
print("| target | req/s | p99 | proxy CPU-µs / request | RSS | non-2xx |")
print("|---|---|---|---|---|---|")
for name in ["gateway-http", "gateway-https", "nginx-https", "gateway-handshakes", "nginx-handshakes"]:
    print(f"| {name} | {med(name, 0):,.0f} | {med(name, 1):.2f} ms | {med(name, 2):.1f} | {med(name, 3)} MB | {sum(x[4] for x in rows[name])} |")
per_pass = [b[0] / a[0] for a, b in zip(rows["gateway-http"], rows["gateway-https"])]
cpu_pass = [a[2] / b[2] for a, b in zip(rows["gateway-http"], rows["gateway-https"])]
print(f"\nHTTPS keep-alive / our plain HTTP: {med('gateway-https', 0) / med('gateway-http', 0):.2f}× req/s "
      f"(target ≥ 0.8×); vs nginx HTTPS: {med('gateway-https', 0) / med('nginx-https', 0):.2f}×")
print(f"paired by pass: req/s ratio median {statistics.median(per_pass):.2f}× ({', '.join(f'{x:.2f}' for x in per_pass)}); "
      f"requests per CPU-second ratio median {statistics.median(cpu_pass):.2f}× ({', '.join(f'{x:.2f}' for x in cpu_pass)})")
hs = lambda n: 1e6 / med(n, 2)
print(f"new handshakes per proxy CPU-second: gateway {hs('gateway-handshakes'):,.0f}, nginx {hs('nginx-handshakes'):,.0f} "
      f"({hs('gateway-handshakes') / hs('nginx-handshakes'):.2f}× nginx; target ≥ 1×)")
PY
  echo "raw results: $RESULTS" >&2
  exit 0
fi
if [ "$MODE" = multicore ]; then
  # Both cores for everyone: nginx with 2 workers against the gateway with 2 threads, as one runtime per
  # thread (the default) and as one work-stealing pool; wrk (2 threads) and the origin share the cores.
  sed 's/^worker_processes 1;/worker_processes 2;/' "$W/nginx.conf" > "$W/nginx2.conf"
  # reuseport: one service per thread (own SO_REUSEPORT socket, runtime and upstream pool); shared: one
  # service, two single-threaded runtimes sharing a socket and a pool; stealing: one work-stealing pool.
  gw_config 10 | sed "s/^threads = 1$/threads = 2\nreuseport = true/" > "$W/gw2-reuseport.toml"
  gw_config 10 | sed "s/^threads = 1$/threads = 2\nreuseport = false/" > "$W/gw2-shared.toml"
  gw_config 10 | sed "s/^threads = 1$/threads = 2\nwork_stealing = true\nreuseport = false/" > "$W/gw2-stealing.toml"
  for v in reuseport shared stealing; do "$GW" validate --config "$W/gw2-$v.toml" >&2; done
  export PROXY_CPUS=0,1 LOAD_CPUS=0,1 WRK_THREADS=2
  for pass in $(seq 1 "$PASSES"); do
    echo "pass $pass/$PASSES" >&2
    run_one nginx-2-workers 18082 t5.bench.test nginx -c "$W/nginx2.conf" >> "$RESULTS"
    for v in reuseport shared stealing; do
      run_one "gateway-$v" 18083 t5.bench.test "$GW" run --config "$W/gw2-$v.toml" >> "$RESULTS"
    done
  done
  python3 - "$RESULTS" "$PASSES" "$DURATION" "$CONNS" "$W" <<'PY'
import sys, statistics, collections, re
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, p99, cpu, rss, non2xx = line.rstrip("\n").split("\t")
    def ms(v):
        return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    rows[name].append((float(rps), ms(p99), float(cpu), int(rss), int(non2xx)))
print(f"passes={sys.argv[2]} duration={sys.argv[3]}s connections={sys.argv[4]}, everything on both cores (medians; req/s per pass in brackets)\n")
print("| target | req/s | p99 | proxy CPU-µs / request | RSS | non-2xx | upstream connections reused on another thread |")
print("|---|---|---|---|---|---|---|")
base = statistics.median(x[0] for x in rows["nginx-2-workers"])
def crossings(name):
    # gateway_upstream_connections_total, summed over the passes' scrapes (each pass a new process).
    kinds = collections.Counter()
    try:
        for line in open(f"{sys.argv[5]}/{name}.metrics"):
            m = re.match(r'gateway_upstream_connections_total\{kind="(\w+)"\} (\S+)', line)
            if m:
                kinds[m.group(1)] += float(m.group(2))
    except FileNotFoundError:
        return "–"
    reused = kinds["reused_same_thread"] + kinds["reused_other_thread"]
    if reused == 0:
        return "–"
    return f"{kinds['reused_other_thread'] / reused:.1%} of {reused:,.0f}"
for name in ["nginx-2-workers", "gateway-reuseport", "gateway-shared", "gateway-stealing"]:
    r = rows[name]
    rps = statistics.median(x[0] for x in r)
    print(f"| {name} | {rps:,.0f} ({rps/base:.2f}× nginx; {', '.join(f'{x[0]:,.0f}' for x in r)}) | "
          f"{statistics.median(x[1] for x in r):.2f} ms | {statistics.median(x[2] for x in r):.1f} | "
          f"{statistics.median(x[3] for x in r)} MB | {sum(x[4] for x in r)} | {crossings(name)} |")
PY
  echo "raw results: $RESULTS" >&2
  exit 0
fi
if [ "$MODE" = ablation ]; then
  # One route (every tenant's host) to the origin; each row adds one piece of the edge to the one before.
  SECRET=bench-secret-bench-secret-bench-secret-01
  export BENCH_JWT_SECRET=$SECRET
  # ab_config ACCESS_LOG SECURITY_HEADERS(on|off) AUTH [RATE_LIMITS] [EXTRA_TOML]: the tenant route of
  # gw_config (no exact-host routes), with [auth.jwt] and the route's auth and security headers.
  ab_config() {
    local sec=""
    [ "$2" = off ] && sec='security_headers = { hsts = false, content_type_options = false, referrer_policy = "" }'
    ACCESS_LOG=$1 gw_config 0 "${4:-[]}" "${5:-}
[auth.jwt]
secret_env = \"BENCH_JWT_SECRET\"" "auth = \"$3\"
$sec"
  }
  ab_config false off none > "$W/ab-nolog.toml"
  ab_config true off none > "$W/ab-log.toml"
  ab_config true on none > "$W/ab-sec.toml"
  ab_config true on jwt_tenant > "$W/ab-jwt.toml"
  ab_config true on jwt_tenant '["per_tenant"]' '[redis]
url_env = "BENCH_REDIS_URL"
[rate_limits.per_tenant]
key = "tenant"
limit = 1000000
period = "1s"' > "$W/ab-jwt-rl.toml"
  for c in nolog log sec jwt jwt-rl; do "$GW" validate --config "$W/ab-$c.toml" >&2; done
  # A token of tenant "acme" (the host's), as the backend mints them; valid for a day.
  TOKEN=$("$CARGO_TARGET_DIR/release/loadtest" token --secret "$SECRET" --tenant acme --role admin)
  ROWS=(bare-pingora gateway-no-log gateway-log gateway-security-headers gateway-jwt gateway-jwt-redis-limit)
  ab_run() { # $1 = run_one or count_one
    "$1" bare-pingora 18084 acme.bench.test "$BARE" "$BAREPORT" "$ORIGIN"
    "$1" gateway-no-log 18083 acme.bench.test "$GW" run --config "$W/ab-nolog.toml"
    "$1" gateway-log 18083 acme.bench.test "$GW" run --config "$W/ab-log.toml"
    "$1" gateway-security-headers 18083 acme.bench.test "$GW" run --config "$W/ab-sec.toml"
    WRK_HEADER2="Authorization: Bearer $TOKEN" "$1" gateway-jwt 18083 acme.bench.test "$GW" run --config "$W/ab-jwt.toml"
    WRK_HEADER2="Authorization: Bearer $TOKEN" "$1" gateway-jwt-redis-limit 18083 acme.bench.test "$GW" run --config "$W/ab-jwt-rl.toml"
  }
  for pass in $(seq 1 "$PASSES"); do
    echo "pass $pass/$PASSES" >&2
    ab_run run_one >> "$RESULTS"
  done
  COUNTS="$W/counts.tsv"; : > "$COUNTS"
  if [ "$COUNT" = 1 ]; then echo "instruction counts (callgrind)" >&2; ab_run count_one >> "$COUNTS"; fi
  python3 - "$RESULTS" "$COUNTS" "$PASSES" "$DURATION" "$CONNS" "${ROWS[@]}" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, p99, cpu, rss, non2xx = line.rstrip("\n").split("\t")
    def ms(v):
        return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    rows[name].append((float(rps), ms(p99), float(cpu), int(rss), int(non2xx)))
counts = {}
for line in open(sys.argv[2]):
    name, ir, reqs = line.split("\t")
    counts[name] = (int(ir), int(reqs))
names = sys.argv[6:]
print(f"passes={sys.argv[3]} duration={sys.argv[4]}s connections={sys.argv[5]} (medians; CPU per pass in brackets)\n")
print("| row | instructions / request | × bare | CPU-µs / request | × bare | req/s | p99 | RSS | non-2xx |")
print("|---|---|---|---|---|---|---|---|---|")
cpu = lambda n: statistics.median(x[2] for x in rows[n])
for n in names:
    r = rows[n]
    ir = counts.get(n, (0, 0))[0]
    base_ir = counts.get("bare-pingora", (0, 0))[0]
    irs = f"{ir:,}" if ir else "–"
    irx = f"{ir / base_ir:.2f}×" if ir and base_ir else "–"
    print(f"| {n} | {irs} | {irx} | {cpu(n):.1f} ({', '.join(f'{x[2]:.1f}' for x in r)}) | {cpu(n) / cpu('bare-pingora'):.2f}× | "
          f"{statistics.median(x[0] for x in r):,.0f} | {statistics.median(x[1] for x in r):.2f} ms | "
          f"{statistics.median(x[3] for x in r)} MB | {sum(x[4] for x in r)} |")
PY
  echo "raw results: $RESULTS $COUNTS" >&2
  exit 0
fi
if [ "$MODE" = ratelimit ]; then
  for pass in $(seq 1 "$PASSES"); do
    echo "pass $pass/$PASSES" >&2
    # acme.bench.test matches the wildcard route only (the one carrying the policy in gwrl.toml).
    run_one gateway 18083 acme.bench.test "$GW" run --config "$W/gw10.toml" >> "$RESULTS"
    run_one gateway-global-limit 18083 acme.bench.test "$GW" run --config "$W/gwrl.toml" >> "$RESULTS"
  done
  python3 - "$RESULTS" "$PASSES" "$DURATION" "$CONNS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, p99, cpu, rss, non2xx = line.rstrip("\n").split("\t")
    def ms(v):
        return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    rows[name].append((float(rps), ms(p99), float(cpu), int(non2xx)))
print(f"passes={sys.argv[2]} duration={sys.argv[3]}s connections={sys.argv[4]} (medians; per pass in brackets)\n")
print("| target | req/s | p99 | proxy CPU-µs / request | non-2xx |")
print("|---|---|---|---|---|")
for name in ["gateway", "gateway-global-limit"]:
    r = rows[name]
    print(f"| {name} | {statistics.median(x[0] for x in r):,.0f} ({', '.join(f'{x[0]:,.0f}' for x in r)}) | "
          f"{statistics.median(x[1] for x in r):.2f} ms | {statistics.median(x[2] for x in r):.1f} | {sum(x[3] for x in r)} |")
ratios = [b[0] / a[0] for a, b in zip(rows["gateway"], rows["gateway-global-limit"])]
print(f"\nwith a global limit / without: {statistics.median(ratios):.2f}× (per pass: {', '.join(f'{x:.2f}' for x in ratios)})")
PY
  python3 - "$W/gateway-global-limit.metrics" <<'PY'
import sys, re, collections
n = collections.Counter()
for line in open(sys.argv[1]):
    name, value = line.rsplit(" ", 1)
    m = re.search(r'decision="([a-z_]+)"', name)
    n[m.group(1) if m else name] += float(value)
print("\ndecisions of the limited gateway, all passes with warm-ups:", ", ".join(f"{k} {v:,.0f}" for k, v in sorted(n.items())))
PY
  echo "raw results: $RESULTS" >&2
  exit 0
fi
