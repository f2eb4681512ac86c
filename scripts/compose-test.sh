#!/usr/bin/env bash
# Builds the deployment's images offline and runs the compose stack for real on this machine (Debian's podman
# driven by docker-compose through podman's API socket), then checks it the way an operator would use it and
# rehearses the runbook's operations under load. Exit 0 only when every step passed; the last line printed
# is a one-line summary. Takes about COMPOSE_MINUTES minutes (README); run from a clean clone as
#   scripts/compose-test.sh
# Environment: COMPOSE_KEEP=1 leaves the stack running at the end (docker-compose -p aggios-edge-ci …),
# COMPOSE_REBUILD_BASE=1 makes the Debian base image again, COMPOSE_STEPS="images up" runs only those steps
# (names below; later steps need the earlier ones' stack).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

CT_DIR="${AGGIOS_COMPOSE_DIR:-$STATE_DIR/compose}"
PROJECT=aggios-edge-ci
BASE_IMAGE=localhost/aggios-debian:bookworm
REGISTRY=localhost/aggios
HTTP_PORT=18080
HTTPS_PORT=18443
# edge-lb's ports (two gateways behind one port, compose/docker-compose.ha.yml).
LB_HTTP_PORT=18081
LB_HTTPS_PORT=18444
mkdir -p "$CT_DIR"
SUMMARY="$CT_DIR/summary.txt"
: > "$SUMMARY"
FAILED=0

# step NAME — times the step that follows; `done_step` records it in the summary.
STEP_NAME="" STEP_T0=0
step() {
  STEP_NAME=$1 STEP_T0=$(date +%s.%N)
  log "step: $1"
}
done_step() {
  local secs; secs=$(awk -v a="$STEP_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  printf '%-28s %7ss  %s\n' "$STEP_NAME" "$secs" "${1:-ok}" | tee -a "$SUMMARY" >&2
}
fail() {
  printf '%-28s FAILED   %s\n' "$STEP_NAME" "$*" | tee -a "$SUMMARY" >&2
  FAILED=$((FAILED + 1))
  finish
}
finish() {
  local status=passed
  [ "$FAILED" -eq 0 ] || status="FAILED"
  echo >&2
  cat "$SUMMARY" >&2
  if [ "$FAILED" -ne 0 ]; then
    dc ps >&2 2>/dev/null || true
    for s in gateway backend migrate postgres minio-init pebble; do
      echo "--- last log lines of $s" >&2
      dc logs --no-color --tail 15 "$s" >&2 2>/dev/null || true
    done
    diagnose_backends >&2 2>/dev/null || true
  fi
  echo "compose-test: $status — $(grep -c . "$SUMMARY") steps, $FAILED failed, $(summary_line)"
  [ "$FAILED" -eq 0 ] && exit 0 || exit 1
}
# What a failed step leaves to read about the backends' database connections (a quickstart once got
# "pool timed out" from one backend replica for seconds while the other served, and the 15 log lines
# above did not say why): every warning each replica logged, how long each takes to resolve and
# reach both Postgres servers now, and who is connected to them.
diagnose_backends() {
  local b
  for b in $(podman ps --format '{{.Names}}' | grep "^${PROJECT}_backend_"); do
    echo "--- $b: warnings and errors"
    podman logs "$b" 2>&1 | grep -v '"level":"INFO"' | tail -40
    echo "--- $b: name resolution and TCP connect, now"
    podman exec "$b" bash -c 'for hp in postgres:5432 postgres-replica:5432 redis:6379 minio:9000; do
        h=${hp%:*} p=${hp#*:}
        s=$(date +%s%N); a=$(getent ahosts "$h" | head -1); m=$(date +%s%N)
        timeout 5 bash -c "exec 3<>/dev/tcp/$h/$p" && ok=open || ok=failed; e=$(date +%s%N)
        echo "$h: ${a:-unresolved}; resolved in $(( (m - s) / 1000000 )) ms; TCP $ok in $(( (e - m) / 1000000 )) ms"
      done' 2>&1 || true
  done
  for pg in postgres postgres-replica; do
    echo "--- $pg: pg_stat_activity"
    podman exec "$(container "$pg")" psql -X -U aggios_owner -d aggios -Atc \
      "select usename, client_addr, state, wait_event_type, count(*) from pg_stat_activity group by 1,2,3,4 order by 5 desc" || true
  done
}
# A command that fails outside a check (set -e would end the script silently) is a failed step too.
trap 'fail "unexpected error (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
summary_line() { grep -o 'requests=[0-9]* failed=[0-9]*' "$SUMMARY" | awk -F'[= ]' '{r+=$2; f+=$4} END{printf "%d requests under rehearsal, %d failed", r, f}'; }
want_step() { [ -z "${COMPOSE_STEPS:-}" ] || [[ " $COMPOSE_STEPS " == *" $1 "* ]]; }

# --- podman and docker-compose -----------------------------------------------------------------------
step tools
ensure_build_deps
# netavark runs iptables for every container network (a fresh machine may lack it: "netavark: No such
# file or directory" at the first build step that needs the network).
ensure_debs podman runc docker-compose mmdebstrap netavark aardvark-dns catatonit slirp4netns uidmap \
  iptables openssl curl jq
ensure_s3s_fs
# crun refuses this machine's hybrid cgroups, and there is no systemd: runc and cgroupfs. Containers may
# not be given rlimits above the ones podman itself runs with (setrlimit is refused in the container):
# nofile is the machine's hard limit, nproc a value found to be allowed here.
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat > "$CT_DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
CONF
export CONTAINERS_CONF="$CT_DIR/containers.conf"
SOCK="$CT_DIR/podman.sock"
PODMAN_PID=""
if ! curl -fs --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  rm -f "$SOCK"
  podman system service --time=0 "unix://$SOCK" > "$CT_DIR/podman-service.log" 2>&1 &
  PODMAN_PID=$!
  for _ in $(seq 100); do curl -fs --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs --unix-socket "$SOCK" http://d/_ping >/dev/null || fail "podman's API socket did not come up"
fi
export DOCKER_HOST="unix://$SOCK" COMPOSE_HTTP_TIMEOUT=300
done_step "podman $(podman --version | awk '{print $3}'), docker-compose $(docker-compose version --short)"

dc() {
  docker-compose -p "$PROJECT" --env-file "$CT_DIR/env" -f compose/docker-compose.yml \
    -f compose/docker-compose.offline.yml --profile acme-staging "$@"
}

# --- images --------------------------------------------------------------------------------------------
step binaries
# The images take the host's release binaries (BINARIES=host): CI does not compile them a second time
# inside a build container. loadtest drives the rehearsals.
cargo build --release --locked -p gateway -p backend -p loadtest >&2 || fail "cargo build --release"
BIN="$CARGO_TARGET_DIR/release"
install -d compose/.host-bin
install -m 0755 "$BIN/gateway" "$BIN/backend" "$S3S_FS_BIN" compose/.host-bin/
done_step "gateway, backend, loadtest (release); s3s-fs"

step base-image
if [ "${COMPOSE_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE_IMAGE"; then
  # Debian bookworm minbase with its updates and security suites, from the host's mirror.
  mmdebstrap --quiet --variant=minbase bookworm "$CT_DIR/base.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" >&2 || fail "mmdebstrap"
  podman import --change 'CMD ["/bin/bash"]' "$CT_DIR/base.tar" "$BASE_IMAGE" >/dev/null || fail "podman import"
  rm -f "$CT_DIR/base.tar"
  done_step "made $BASE_IMAGE ($(podman image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
else
  done_step "reused $BASE_IMAGE"
fi

step images
build() { # TAG DOCKERFILE CONTEXT [ARGS…]
  local tag=$1 file=$2 ctx=$3; shift 3
  # --format docker keeps HEALTHCHECK (the OCI format drops it).
  podman build --quiet --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" \
    "$@" -t "$tag" -f "$file" "$ctx" > "$CT_DIR/build-$(basename "$file").log" 2>&1 \
    || { tail -20 "$CT_DIR/build-$(basename "$file").log" >&2; fail "podman build $file"; }
}
build "$REGISTRY/aggios-edge-gateway:ci" compose/gateway.Dockerfile . --build-arg BINARIES=host \
  --build-arg "BINARY_DIGEST=$(sha256sum compose/.host-bin/gateway | cut -d' ' -f1)"
build "$REGISTRY/aggios-edge-backend:ci" compose/backend.Dockerfile . --build-arg BINARIES=host
build "$REGISTRY/aggios-edge-pebble:2.4.0" compose/pebble/Dockerfile compose/pebble
build localhost/aggios-offline-postgres:15 compose/offline/postgres.Dockerfile compose
build localhost/aggios-offline-redis:7 compose/offline/redis.Dockerfile compose
build localhost/aggios-offline-prometheus:2 compose/offline/prometheus.Dockerfile compose
build localhost/aggios-offline-s3:0.14 compose/offline/s3.Dockerfile compose
build localhost/aggios-offline-haproxy:2.6 compose/offline/haproxy.Dockerfile compose
sizes=$(for i in aggios-edge-gateway:ci aggios-edge-backend:ci; do
  podman image inspect -f '{{.Size}}' "$REGISTRY/$i" | awk -v n="${i%%:*}" '{printf "%s %.0f MB; ", n, $1/1e6}'
done)
echo "$sizes" > "$CT_DIR/image-sizes.txt"
done_step "${sizes%; }"

# --- the stack -------------------------------------------------------------------------------------------
# A fresh environment file of random secrets for this run (an operator's compose/.env is not touched).
rand() { head -c "${1:-24}" /dev/urandom | base64 | tr -d '/+=\n'; }
if [ ! -s "$CT_DIR/env" ] || want_step images; then
  s3_secret=$(rand)
  cat > "$CT_DIR/env" <<ENV
REGISTRY=$REGISTRY
GATEWAY_VERSION=ci
BACKEND_VERSION=ci
BACKEND_REPLICAS=2
GATEWAY_CONFIG=gateway.acme-staging.toml
GATEWAY_LOG=info
GATEWAY_HTTP_PUBLISH=127.0.0.1:$HTTP_PORT
GATEWAY_HTTPS_PUBLISH=127.0.0.1:$HTTPS_PORT
PROMETHEUS_PUBLISH=127.0.0.1:19090
GRAFANA_PUBLISH=127.0.0.1:13000
MINIO_CONSOLE_PUBLISH=127.0.0.1:19001
EDGE_LB_HTTP_PUBLISH=127.0.0.1:$LB_HTTP_PORT
EDGE_LB_HTTPS_PUBLISH=127.0.0.1:$LB_HTTPS_PORT
EDGE_LB_IMAGE=localhost/aggios-offline-haproxy:2.6
GATEWAY_ADMIN_TOKEN=$(rand)
ACME_STORAGE_KEY=$(head -c 32 /dev/urandom | base64)
ACME_TSIG_SECRET=$(head -c 32 /dev/urandom | base64)
JWT_SECRET=$(rand 48)
TENANT_BASE_DOMAINS=aggios.test
OWNER_DB_PASSWORD=$(rand)
APP_DB_PASSWORD=$(rand)
POSTGRES_REPLICATION_PASSWORD=$(rand)
DB_SLOW_QUERY_MS=250
REDIS_PASSWORD=$(rand)
REDIS_AOF=yes
MINIO_ROOT_USER=aggios-root
MINIO_ROOT_PASSWORD=$s3_secret
MINIO_KMS_SECRET_KEY=minio-kms:$(head -c 32 /dev/urandom | base64)
MINIO_REPLICA_URL=
S3_BUCKET=aggios
S3_REGION=us-east-1
# s3s-fs (the offline MinIO) knows one key pair: the backend gets the root pair.
S3_ACCESS_KEY_ID=aggios-root
S3_SECRET_ACCESS_KEY=$s3_secret
GRAFANA_ADMIN_PASSWORD=$(rand)
ENV
fi
set -a; source "$CT_DIR/env"; set +a

HC_PID=""
# teardown — the project's containers, network and volumes gone. `down` alone may leave a container that
# a restart policy brings back while it stops, and compose then refuses the network it left behind.
teardown() {
  dc down -v --remove-orphans -t 10 >/dev/null 2>&1 || true
  podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  podman rm -f -t 0 "${PROJECT}_pitr" >/dev/null 2>&1 || true
  podman network rm -f "${PROJECT}_edge" >/dev/null 2>&1 || true
  podman volume ls -q | grep "^${PROJECT}_" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  # A bridge left holding the stack's subnet with no network behind it (a run stopped half-way, or a
  # network removed with another podman configuration) makes the next `up` fail with "subnet
  # 172.28.0.0/24 is already used on the host": remove it.
  if ! podman network exists "${PROJECT}_edge" 2>/dev/null; then
    ip -o -4 addr show 2>/dev/null | awk '$4 == "172.28.0.1/24" {print $2}' \
      | xargs -r -n1 ip link delete >/dev/null 2>&1 || true
  fi
}
# Runs at exit, under `set -e`: a command failing here would change the script's exit status (a run
# whose 14 steps all passed exited 1 because the failover step's writer, already waited for, could not
# be killed again), so nothing here may fail, and the status `finish` chose is kept.
cleanup() {
  local status=$?
  set +e
  [ -n "${HC_PID:-}" ] && kill "$HC_PID" 2>/dev/null
  [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null
  [ -n "${LOGIN_PID:-}" ] && kill "$LOGIN_PID" 2>/dev/null
  [ -n "${WRITER_PID:-}" ] && kill "$WRITER_PID" 2>/dev/null
  if [ "${COMPOSE_KEEP:-0}" != 1 ]; then
    teardown
    # The API socket this run started goes with it (a kept stack keeps it for docker-compose).
    [ -n "${PODMAN_PID:-}" ] && kill "$PODMAN_PID" 2>/dev/null
  fi
  exit "$status"
}
trap cleanup EXIT
# Without systemd, podman 4.3 runs no health check by itself: this loop runs each container's check the
# way Docker's engine would (docker-compose's `condition: service_healthy` waits on the result).
healthchecks() {
  while :; do
    for id in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
      podman healthcheck run "$id" >/dev/null 2>&1 || true
    done
    sleep 2
  done
}
# health SERVICE — the health of each of the service's containers, one per line.
health() {
  podman ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}} {{.Status}}'
}
# wait_healthy SERVICE SECONDS — every container of the service healthy.
wait_healthy() {
  local i=0
  while :; do
    local all; all=$(health "$1")
    [ -n "$all" ] && ! grep -qv '(healthy)' <<<"$all" && return 0
    i=$((i + 1)); [ $i -gt $(( $2 / 2 )) ] && { echo "$1: $all" >&2; return 1; }
    sleep 2
  done
}

healthchecks &
HC_PID=$!
if want_step up; then
  step up
  teardown
  rm -f "$CT_DIR/password"
  # Every service of the stack but Grafana (no Debian package, no image here).
  dc up -d --no-build gateway prometheus pebble > "$CT_DIR/up.log" 2>&1 \
    || { tail -20 "$CT_DIR/up.log" >&2; fail "docker-compose up"; }
  for s in postgres postgres-replica redis minio backend gateway prometheus pebble; do
    wait_healthy "$s" 180 || fail "$s never became healthy"
  done
  for s in migrate minio-init; do
    code=$(podman inspect -f '{{.State.ExitCode}} {{.State.Status}}' "${PROJECT}_${s}_1")
    [ "$code" = "0 exited" ] || fail "$s: $code"
  done
  # Prometheus scrapes the gateway's admin listener with the token and the backends: every target up.
  targets=""
  for _ in $(seq 30); do
    targets=$(podman exec "${PROJECT}_prometheus_1" wget -qO- http://127.0.0.1:9090/api/v1/targets \
      | jq -r '.data.activeTargets[] | "\(.labels.job)=\(.health)"' | sort | tr '\n' ' ')
    grep -q 'gateway=up' <<<"$targets" && ! grep -qv '=up' <<<"$(tr ' ' '\n' <<<"$targets" | grep .)" && break
    sleep 2
  done
  grep -q 'gateway=up' <<<"$targets" && ! grep -q '=down\|=unknown' <<<"$targets" || fail "Prometheus targets: $targets"
  done_step "$(podman ps --filter "label=com.docker.compose.project=$PROJECT" -q | wc -l) containers healthy; migrate and minio-init exited 0"
fi

# --- what an operator checks first ---------------------------------------------------------------------
container() { echo "${PROJECT}_$1_${2:-1}"; }
psql_owner() { podman exec -i "$(container postgres)" psql -X -v ON_ERROR_STOP=1 -U aggios_owner -d aggios -Atq "$@"; }
# https PATH [CURL ARGS…] on HOST (default demo.aggios.test) through the published port (EDGE_PORT,
# default the gateway's), verified against pebble's root: prints the body, then the status on the last line.
TENANT_HOST=demo.aggios.test
https() {
  local path=$1 port=${EDGE_PORT:-$HTTPS_PORT}; shift
  curl -sS --max-time 10 --cacert "$CT_DIR/pebble-root.pem" \
    --resolve "$TENANT_HOST:$port:127.0.0.1" -w '\n%{http_code}' "$@" "https://$TENANT_HOST:$port$path"
}
status_of() { tail -n1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }
login() { # EMAIL PASSWORD -> access token
  local r; r=$(https /api/auth/login -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}")
  [ "$(status_of "$r")" = 200 ] || { echo "login $1: $r" >&2; return 1; }
  body_of "$r" | jq -r .access_token
}

if want_step quickstart; then
  step quickstart
  # The application role may not bypass row-level security, nor own the tables.
  roles=$(psql_owner -c "select rolname, rolbypassrls, rolsuper from pg_roles where rolname = 'aggios_app'")
  [ "$roles" = "aggios_app|f|f" ] || fail "aggios_app: $roles (want no BYPASSRLS, not superuser)"
  owned=$(psql_owner -c "select count(*) from pg_tables where schemaname = 'public' and tableowner = 'aggios_app'")
  [ "$owned" = 0 ] || fail "aggios_app owns $owned tables"
  # Two tenants, one user each, made with the backend's own CLI inside its container.
  # (A second run of the steps on a kept stack reuses them.)
  [ -s "$CT_DIR/password" ] || rand 18 > "$CT_DIR/password"
  PASSWORD=$(cat "$CT_DIR/password")
  for t in demo other; do
    [ -n "$(psql_owner -c "select 1 from tenants where subdomain = '$t'")" ] && continue
    podman exec "$(container backend)" backend tenant create --subdomain "$t" --name "$t agency" >/dev/null \
      || fail "backend tenant create $t"
    printf '%s' "$PASSWORD" | podman exec -i "$(container backend)" backend user create --tenant "$t" \
      --email "admin@$t.test" --role admin --password-stdin >/dev/null || fail "backend user create $t"
  done
  # pebble's root (its management API, inside its container): the chain the gateway serves must verify.
  for _ in $(seq 30); do
    podman exec "$(container pebble)" curl -fsS --cacert /shared/pebble.minica.pem \
      https://localhost:15000/roots/0 > "$CT_DIR/pebble-root.pem" 2>/dev/null && break
    sleep 1
  done
  grep -q 'BEGIN CERTIFICATE' "$CT_DIR/pebble-root.pem" || fail "no root from pebble's management API"
  # The certificates are ordered at start over HTTP-01 (pebble resolves every name to the gateway).
  issued=0
  for _ in $(seq 90); do
    r=$(https /healthz 2>/dev/null || true)
    [ -n "$r" ] && [ "$(status_of "$r")" != 000 ] && { issued=1; break; }
    sleep 2
  done
  [ $issued = 1 ] || fail "no certificate for $TENANT_HOST verified by pebble's root within 180 s: $(https /healthz 2>&1 | tail -2)"
  issuer=$(openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$TENANT_HOST" </dev/null 2>/dev/null \
    | openssl x509 -noout -issuer)
  ACCESS=$(login admin@demo.test "$PASSWORD") || fail "login through the gateway"
  r=$(https /api/users/me -H "authorization: Bearer $ACCESS")
  [ "$(status_of "$r")" = 200 ] && [ "$(body_of "$r" | jq -r .user.email)" = admin@demo.test ] \
    || fail "/api/users/me: $r"
  r=$(https /api/files/notes/hello.txt -X PUT -H "authorization: Bearer $ACCESS" \
    -H 'content-type: text/plain' --data-binary 'hello from the compose stack')
  case $(status_of "$r") in 200|201|204) ;; *) fail "file upload: $r" ;; esac
  r=$(https /api/files/notes/hello.txt -H "authorization: Bearer $ACCESS")
  [ "$(status_of "$r")" = 200 ] && [ "$(body_of "$r")" = 'hello from the compose stack' ] || fail "file read back: $r"
  # The object is under the tenant's prefix in the S3 server's storage.
  tenant_id=$(psql_owner -c "select id from tenants where subdomain = 'demo'")
  podman exec "$(container minio)" sh -c "ls /data/aggios/$tenant_id/" >/dev/null 2>&1 \
    || fail "no object under aggios/$tenant_id/ in the S3 stand-in"
  # demo's token on the other tenant's host: refused by the gateway before the backend.
  r=$(TENANT_HOST=other.aggios.test https /api/users/me -H "authorization: Bearer $ACCESS")
  [ "$(status_of "$r")" = 403 ] && grep -q tenant_mismatch <<<"$r" || fail "demo's token on other.aggios.test: $r"
  done_step "HTTPS by pebble ($issuer): login, /api/users/me, upload read back, cross-tenant 403"
fi

if want_step image-facts; then
  step "image facts"
  facts=""
  for s in gateway backend; do
    c=$(container "$s")
    # PID 1 of the container is the binary itself: its user and capabilities as the kernel sees them.
    status=$(podman exec "$c" cat /proc/1/status)
    uid=$(awk '/^Uid:/ {print $3}' <<<"$status")      # effective uid
    eff=$(awk '/^CapEff:/ {print $2}' <<<"$status")
    bnd=$(awk '/^CapBnd:/ {print $2}' <<<"$status")
    [ "$uid" = 10001 ] || fail "$s runs as uid $uid"
    want=0000000000000000; [ "$s" = gateway ] && want=0000000000000400   # CAP_NET_BIND_SERVICE only
    [ "$eff" = "$want" ] && [ "$bnd" = "$want" ] || fail "$s: CapEff $eff CapBnd $bnd (want $want)"
    out=$(podman exec "$c" sh -c 'touch /usr/local/bin/probe 2>&1 || true; touch /tmp/probe 2>&1 || true')
    grep -q 'Read-only file system' <<<"$out" || fail "$s: the root filesystem is writable ($out)"
    facts="$facts$s uid $uid caps $eff read-only root; "
  done
  # The images carry the binaries this run built (a build cache that kept an older one would test it).
  for b in gateway backend; do
    inside=$(podman exec "$(container "$b")" sha256sum "/usr/local/bin/$b" | cut -d' ' -f1)
    [ "$inside" = "$(sha256sum "compose/.host-bin/$b" | cut -d' ' -f1)" ] || fail "$b: the image holds another binary than the host's"
  done
  # The gateway binds 80 and 443 itself, as uid 10001, with that one capability.
  podman exec "$(container gateway)" sh -c 'cat /proc/net/tcp /proc/net/tcp6' | awk '$4 == "0A" {print $2}' \
    | grep -qi ':01BB$' || fail "nothing listens on 443 in the gateway container"
  done_step "${facts}$(cat "$CT_DIR/image-sizes.txt")"
fi

# --- operations under load -----------------------------------------------------------------------------
# load_start NAME SECONDS — idempotent GETs (an open loop, 100/s over 8 keep-alive connections) and logins
# (one every 4 s: under the stack's 20/min login limit per client address) through the gateway container.
# A third argument reads another path (GET /api/users reads from the replica); EDGE_PORT another port.
load_start() {
  LOAD_NAME=$1
  local port=${EDGE_PORT:-$HTTPS_PORT}
  "$BIN/loadtest" run --json -c 8 --rate 100 -d "${2}s" --timeout 5s --ca "$CT_DIR/pebble-root.pem" \
    --host "$TENANT_HOST" -H "authorization: Bearer $ACCESS" \
    "https://127.0.0.1:$port${3:-/api/users/me}" > "$CT_DIR/load-$1-get.json" 2> "$CT_DIR/load-$1-get.log" &
  LOAD_PID=$!
  "$BIN/loadtest" run --json -c 1 --rate 0.25 -d "${2}s" --timeout 5s --ca "$CT_DIR/pebble-root.pem" \
    --host "$TENANT_HOST" -X POST -H 'content-type: application/json' \
    --body "{\"email\":\"admin@demo.test\",\"password\":\"$PASSWORD\"}" \
    "https://127.0.0.1:$port/api/auth/login" > "$CT_DIR/load-$1-login.json" 2> "$CT_DIR/load-$1-login.log" &
  LOGIN_PID=$!
}
# load_end — waits for the load (in this shell: a subshell cannot wait for it), then sets LOAD_RESULT to
# "requests=N failed=M …": every request that was not answered 2xx counts as failed (statuses and
# transport errors), and so does an open-loop request never sent. loadtest's `requests` already counts
# the transport failures (responses + failures): they are not added again (they were, and every
# failure was reported twice).
load_end() {
  wait "$LOAD_PID" "$LOGIN_PID" || true
  LOAD_PID=""
  LOAD_RESULT=$(jq -rs '
    def failed: .requests - .status["2xx"] + (.missed // 0);
    (map(.requests) | add) as $r | (map(failed) | add) as $f
    | "requests=\($r) failed=\($f) (GET \(.[0].requests)/\(.[0] | failed) failed, login \(.[1].requests)/\(.[1] | failed) failed)"
  ' "$CT_DIR/load-$LOAD_NAME-get.json" "$CT_DIR/load-$LOAD_NAME-login.json") \
    || LOAD_RESULT="requests=0 failed=1 (no figures from loadtest)"
  # What a failed request was, from both sides: the gateways' access-log lines of 5xx answers (their
  # `error` names the edge's reason, their `server` the backend) and the backends' warnings, kept
  # beside the step's figures and printed — the stack may be gone before anyone reads its logs.
  if [ "$(failed_of "$LOAD_RESULT")" != 0 ]; then
    { echo "--- 5xx answers in the gateways' access logs"
      podman ps -a --format '{{.Names}}' | grep -E "^${PROJECT}_gateway" | while read -r c; do
        podman logs "$c" 2>&1 | grep -E '"status":5[0-9][0-9]' | tail -10 | sed "s/^/$c: /"
      done
      echo "--- backend warnings, errors and 5xx answers"
      podman ps -a --format '{{.Names}}' | grep -E "^${PROJECT}_backend" | while read -r c; do
        podman logs "$c" 2>&1 | grep -E '"level":"(WARN|ERROR)"|"status":5[0-9][0-9]' | tail -10 | sed "s/^/$c: /"
      done
    } > "$CT_DIR/load-$LOAD_NAME-failures.log" 2>&1 || true
    cat "$CT_DIR/load-$LOAD_NAME-failures.log" >&2
  fi
}
failed_of() { grep -o 'failed=[0-9]*' <<<"$1" | head -1 | cut -d= -f2; }
admin_api() { podman exec "$(container gateway)" curl -fsS -H "authorization: Bearer $GATEWAY_ADMIN_TOKEN" "http://127.0.0.1:9000$1"; }
# servers_of UPSTREAM — the healthy servers the gateway balances over now.
servers_of() {
  admin_api /api/routes | jq -r --arg u "$1" \
    '[.upstreams[]? | select(.name == $u) | .servers[] | select(.healthy)] | length'
}
wait_servers() { # N SECONDS
  local i=0
  until [ "$(servers_of backend 2>/dev/null)" = "$1" ]; do
    i=$((i + 1)); [ $i -gt "$2" ] && return 1; sleep 1
  done
}

if want_step scale; then
  step "scale backend 2-4-1"
  wait_servers 2 60 || fail "the gateway does not balance over 2 backends: $(admin_api /api/routes)"
  load_start scale 70
  t0=$(date +%s)
  dc up -d --no-build --no-deps --no-recreate --scale backend=4 backend > "$CT_DIR/scale.log" 2>&1 || fail "scale to 4"
  wait_servers 4 40 || fail "the gateway did not follow DNS to 4 backends: $(servers_of backend)"
  up4=$(( $(date +%s) - t0 )); t0=$(date +%s)
  dc up -d --no-build --no-deps --no-recreate --scale backend=1 backend >> "$CT_DIR/scale.log" 2>&1 || fail "scale to 1"
  wait_servers 1 40 || fail "the gateway did not follow DNS to 1 backend: $(servers_of backend)"
  down1=$(( $(date +%s) - t0 ))
  load_end; r=$LOAD_RESULT
  [ "$(failed_of "$r")" = 0 ] || fail "$r"
  dc up -d --no-build --no-deps --no-recreate --scale backend=2 backend >> "$CT_DIR/scale.log" 2>&1 || fail "scale back to 2"
  # Not a measured claim (those are 2→4 and 4→1 above): the stack is put back for the next steps. Given
  # 120 s: in one CI run podman's DNS (aardvark-dns) timed out on every lookup for over 40 s after this
  # scale-up, and the gateway kept its last known backend, as designed, until it answered again.
  wait_healthy backend 60 && wait_servers 2 120 || fail "back to 2 backends: $(servers_of backend) balanced"
  done_step "$r; followed 2→4 in ${up4}s and 4→1 in ${down1}s, no reload"
fi

if want_step kill-backend; then
  step "kill a backend"
  load_start kill 30
  sleep 5
  victim=$(container backend 2)
  podman kill --signal KILL "$victim" >/dev/null || fail "podman kill $victim"
  load_end; r=$LOAD_RESULT
  [ "$(failed_of "$r")" = 0 ] || fail "$r"
  # It comes back (restart: unless-stopped) and the gateway takes it again.
  dc up -d --no-build --no-deps --no-recreate --scale backend=2 backend >> "$CT_DIR/scale.log" 2>&1 || true
  wait_healthy backend 90 && wait_servers 2 60 || fail "the killed backend did not come back"
  done_step "$r; SIGKILL to $victim mid-load"
fi

# probe SECONDS FILE — a new connection every 100 ms (curl, 1 s timeout) to EDGE_PORT (default the
# gateway's): "epoch_ms status" lines.
probe() {
  local until=$(( $(date +%s) + $1 )) port=${EDGE_PORT:-$HTTPS_PORT}
  while [ "$(date +%s)" -lt "$until" ]; do
    printf '%s %s\n' "$(date +%s%3N)" \
      "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' --cacert "$CT_DIR/pebble-root.pem" \
        --resolve "$TENANT_HOST:$port:127.0.0.1" "https://$TENANT_HOST:$port/api/users/me" \
        -H "authorization: Bearer $ACCESS" || true)"
    sleep 0.1
  done > "$2"
}
# outage FILE — the span from the first probe not answered 200 to the next one answered after the last
# failure, in seconds (0 when none failed).
outage() {
  awk '$2 != 200 { if (!first) first = $1; last = $1; failed = 1; next }
       failed && !after && $1 > last { after = $1 }
       END { if (!first) print "0.0"; else printf "%.1f", ((after ? after : last) - first) / 1000 }' "$1"
}

if want_step restart-gateway; then
  step "restart the gateway"
  load_start restart 45
  probe 45 "$CT_DIR/probe-restart.txt" &
  PROBE_PID=$!
  sleep 5
  t0=$(date +%s.%N)
  dc restart gateway > "$CT_DIR/restart.log" 2>&1 || fail "docker-compose restart gateway"
  took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  wait "$PROBE_PID"
  load_end; r=$LOAD_RESULT
  window=$(outage "$CT_DIR/probe-restart.txt")
  wait_healthy gateway 60 || fail "the gateway is not healthy after its restart"
  # One container cannot hand its sockets to the next: the window is reported, not required to be 0.
  done_step "$r; outage ${window}s for new connections (restart took ${took}s)"
fi

if want_step two-gateways; then
  step "two gateways, one restarted"
  # gateway-2 and edge-lb (compose/docker-compose.ha.yml) join the running stack; the load goes through
  # the balancer's published port, and the first gateway is restarted, then the second.
  dc_ha() { dc -f compose/docker-compose.ha.yml "$@"; }
  dc_ha up -d --no-build --no-deps gateway-2 edge-lb > "$CT_DIR/ha-up.log" 2>&1 \
    || { tail -20 "$CT_DIR/ha-up.log" >&2; fail "docker-compose up gateway-2 edge-lb"; }
  wait_healthy gateway-2 120 || fail "gateway-2 never became healthy"
  ready=""
  for _ in $(seq 60); do
    # Any HTTP answer over TLS verified against pebble's root: a gateway behind the balancer answered.
    r=$(EDGE_PORT=$LB_HTTPS_PORT https /api/users/me -H "authorization: Bearer $ACCESS" 2>/dev/null || true)
    [ "$(status_of "$r")" = 200 ] && { ready=1; break; }
    sleep 1
  done
  [ -n "$ready" ] || fail "nothing answers through edge-lb on $LB_HTTPS_PORT"
  EDGE_PORT=$LB_HTTPS_PORT load_start ha 60
  EDGE_PORT=$LB_HTTPS_PORT probe 60 "$CT_DIR/probe-ha.txt" &
  PROBE_PID=$!
  sleep 5
  t0=$(date +%s.%N)
  dc restart gateway > "$CT_DIR/ha-restart.log" 2>&1 || fail "docker-compose restart gateway"
  took1=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  wait_healthy gateway 60 || fail "the first gateway is not healthy after its restart"
  sleep 5    # edge-lb's check takes it back (rise 2, every second)
  t0=$(date +%s.%N)
  dc_ha restart gateway-2 >> "$CT_DIR/ha-restart.log" 2>&1 || fail "docker-compose restart gateway-2"
  took2=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  wait "$PROBE_PID"
  load_end; r=$LOAD_RESULT
  window=$(outage "$CT_DIR/probe-ha.txt")
  wait_healthy gateway-2 60 || fail "gateway-2 is not healthy after its restart"
  # edge-lb names each client in a PROXY v2 header: the gateways' access logs show the client's address,
  # never edge-lb's (172.28.0.13).
  podman logs "$(container gateway-2)" > "$CT_DIR/gateway-2.log" 2>&1 || true
  via_lb=$(grep -c '"client_ip":"172.28.0.13"' "$CT_DIR/gateway-2.log" || true)
  clients=$(grep '"client_ip":"' "$CT_DIR/gateway-2.log" | grep -vc '"client_ip":"172.28.0.13"' || true)
  [ "${via_lb:-0}" = 0 ] && [ "${clients:-0}" -gt 0 ] \
    || fail "gateway-2 logged edge-lb's address for $via_lb requests and a client's for $clients (PROXY protocol)"
  client_ip=$(grep -o '"client_ip":"[^"]*"' "$CT_DIR/gateway-2.log" | sort | uniq -c | sort -rn | head -1 | awk '{print $2}')
  # Measured and reported (issue #27 asks for the window, not for zero).
  dc_ha stop -t 30 edge-lb gateway-2 >/dev/null 2>&1; dc_ha rm -f edge-lb gateway-2 >/dev/null 2>&1
  done_step "$r; both replicas restarted one after the other (${took1}s, ${took2}s) behind edge-lb: outage ${window}s for new connections; PROXY v2: ${clients} requests logged with the client's address (${client_ip#\"client_ip\":}), 0 with edge-lb's"
fi

if want_step redis-restart; then
  step "restart Redis (AOF)"
  rcli() { podman exec -i "$(container redis)" redis-cli --no-auth-warning -a "$REDIS_PASSWORD" "$@"; }
  [ "$(rcli config get appendonly | tail -1)" = yes ] || fail "Redis runs without AOF (REDIS_AOF=yes)"
  revoked=$(login admin@demo.test "$PASSWORD") || fail "login"
  pair=$(https /api/auth/login -H 'content-type: application/json' \
    -d "{\"email\":\"admin@demo.test\",\"password\":\"$PASSWORD\"}")
  refresh=$(body_of "$pair" | jq -r .refresh_token)
  r=$(https /api/auth/logout -X POST -H "authorization: Bearer $revoked" -H 'content-type: application/json' -d '{}')
  [ "$(status_of "$r")" = 200 ] || fail "logout: $r"
  r=$(https /api/users/me -H "authorization: Bearer $revoked")
  [ "$(status_of "$r")" = 401 ] || fail "the revoked token was not refused before the restart: $r"
  # Every key that outlives the restart by its TTL (denylist, refresh-token mirrors, rate-limit windows
  # of a minute, sealed certificates, the ACME account) must be there after it.
  sleep 1.5   # appendfsync everysec: what was written a second ago is on disk
  rcli --scan | sort > "$CT_DIR/redis-keys-before.txt"
  # (`if`, not `&&`: a last key with a short TTL would make the loop's status, and so the assignment's,
  # non-zero, and `set -e` would end the script without a word.)
  keep=$(while read -r k; do t=$(rcli ttl "$k" </dev/null); if [ "$t" = -1 ] || [ "$t" -gt 40 ]; then echo "$k"; fi; done \
    < "$CT_DIR/redis-keys-before.txt" | sort)
  load_start redis 30
  sleep 5
  dc restart redis > "$CT_DIR/redis-restart.log" 2>&1 || fail "docker-compose restart redis"
  wait_healthy redis 60 || fail "Redis is not healthy after its restart"
  load_end; r=$LOAD_RESULT
  rcli --scan | sort > "$CT_DIR/redis-keys-after.txt"
  lost=$(comm -23 <(echo "$keep") "$CT_DIR/redis-keys-after.txt" | grep -c . || true)
  [ "$lost" = 0 ] || fail "$lost keys lost: $(comm -23 <(echo "$keep") "$CT_DIR/redis-keys-after.txt" | head -5)"
  grep -q '^aggios:denylist:jti:' "$CT_DIR/redis-keys-after.txt" || fail "no denylist entry after the restart"
  r2=$(https /api/users/me -H "authorization: Bearer $revoked")
  [ "$(status_of "$r2")" = 401 ] && grep -q token_revoked <<<"$r2" || fail "the revoked token is accepted after the restart: $r2"
  r2=$(https /api/auth/refresh -H 'content-type: application/json' -d "{\"refresh_token\":\"$refresh\"}")
  [ "$(status_of "$r2")" = 200 ] || fail "the refresh token does not work after the restart: $r2"
  # Requests during the restart are counted and reported, not required to succeed (issue #27 asks that
  # the state survives; the answers while Redis is away are 503 today, noted there).
  done_step "$r (during the restart); $(grep -c . <<<"$keep") keys kept (denylist, refresh mirrors, windows); revoked token still 401, refresh token works"
fi

if want_step backups; then
  step "backup and PITR"
  # WAL archiving works in the container (archive_command writes /archive as postgres).
  psql_owner -c "select pg_switch_wal()" >/dev/null
  archived=""
  for _ in $(seq 60); do
    archived=$(psql_owner -c "select archived_count, failed_count from pg_stat_archiver")
    [ "${archived%%|*}" -ge 1 ] 2>/dev/null && break
    sleep 1
  done
  [ "${archived%%|*}" -ge 1 ] && [ "${archived#*|}" = 0 ] || fail "WAL archiving: archived|failed = $archived"
  # A base backup with the runbook's command, inside the running container.
  base=$(podman exec -u postgres -e BACKUP_DIR=/archive/base -e PGUSER=aggios_owner "$(container postgres)" \
    /backup/pg-basebackup.sh 2>"$CT_DIR/basebackup.log" | tail -1) || fail "pg-basebackup.sh: $(tail -3 "$CT_DIR/basebackup.log")"
  # After it: a tenant is created (kept by the restore), then the mistake (a user deleted) — restored to
  # the moment between them.
  podman exec "$(container backend)" backend tenant create --subdomain after-backup --name "after backup" >/dev/null \
    || fail "tenant create after the backup"
  sleep 1.1
  target=$(psql_owner -c "select now()")
  sleep 1.1
  psql_owner -c "delete from users where email = 'admin@other.test'" >/dev/null
  psql_owner -c "select pg_switch_wal()" >/dev/null
  before=$(psql_owner -c "select archived_count from pg_stat_archiver")
  for _ in $(seq 60); do
    [ "$(psql_owner -c "select archived_count from pg_stat_archiver")" -gt "$before" ] && break
    sleep 1
  done
  # The restore into a fresh container and volume, with the runbook's script; Postgres replays the WAL
  # up to the target and promotes itself.
  podman volume rm -f "${PROJECT}_pitr" >/dev/null 2>&1 || true
  podman run -d --name "${PROJECT}_pitr" --user postgres -v "${PROJECT}_pg-wal-archive:/archive:ro" \
    -v "${PROJECT}_pitr:/restore" -v "$ROOT/compose/backup:/backup:ro" --entrypoint sh \
    localhost/aggios-offline-postgres:15 -c \
    "/backup/pg-restore.sh '$base' /restore/data '$target' >/dev/null && exec postgres -D /restore/data -c listen_addresses=''" \
    >/dev/null || fail "the restore container did not start"
  pitr() { podman exec -i "${PROJECT}_pitr" psql -X -U aggios_owner -d aggios -Atq "$@"; }
  restored=""
  for _ in $(seq 90); do
    restored=$(pitr -c "select pg_is_in_recovery()" 2>/dev/null || true)
    [ "$restored" = f ] && break
    sleep 1
  done
  [ "$restored" = f ] || { podman logs --tail 20 "${PROJECT}_pitr" >&2; fail "the restored cluster did not finish recovery"; }
  kept=$(pitr -c "select count(*) from tenants where subdomain = 'after-backup'")
  undone=$(pitr -c "select count(*) from users where email = 'admin@other.test'")
  [ "$kept" = 1 ] || fail "the tenant written after the base backup (in the WAL) is missing from the restore"
  [ "$undone" = 1 ] || fail "the mistake was replayed: admin@other.test is gone from the restore"
  # RLS intact for the application role: no tenant set, no user visible; demo's id set, demo's only.
  demo=$(pitr -c "select id from tenants where subdomain = 'demo'")
  none=$(pitr -c "set role aggios_app; select count(*) from users")
  own=$(pitr -c "set role aggios_app; select set_config('app.tenant_id', '$demo', false); select count(*), count(*) filter (where tenant_id <> '$demo') from users" | tail -1)
  [ "$none" = 0 ] && [ "$own" = "1|0" ] || fail "RLS after the restore: $none rows without a tenant, $own for demo"
  podman rm -f "${PROJECT}_pitr" >/dev/null 2>&1; podman volume rm -f "${PROJECT}_pitr" >/dev/null 2>&1
  done_step "WAL archived ($archived archived|failed), base backup, restore to $target: later tenant kept, mistake undone, RLS intact"
fi

# Last: it leaves the stack on the promoted replica.
if want_step failover; then
  step "postgres failover"
  psql_replica() { podman exec -i "$(container postgres-replica)" psql -X -v ON_ERROR_STOP=1 -U aggios_owner -d aggios -Atq "$@"; }
  # Users to create under load: demo's plan must allow them.
  psql_owner -c "update tenants set plan = 'enterprise' where subdomain = 'demo'" >/dev/null
  started() { podman ps --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=backend" --format '{{.Names}} {{.StartedAt}}' | sort; }
  backends_before=$(started)
  ACCESS=$(login admin@demo.test "$PASSWORD") || fail "login"
  # Writes: users created one after another through the gateway; each acknowledged (201) one is noted.
  : > "$CT_DIR/failover-acked.txt"; rm -f "$CT_DIR/failover-stop" "$CT_DIR/failover-write-failures.txt"
  (
    n=0
    while [ ! -e "$CT_DIR/failover-stop" ]; do
      n=$((n + 1))
      r=$(https /api/users -H "authorization: Bearer $ACCESS" -H 'content-type: application/json' \
        -d "{\"email\":\"fo-$n@demo.test\",\"password\":\"$PASSWORD\",\"role\":\"member\"}" 2>/dev/null || true)
      if [ "$(status_of "$r")" = 201 ]; then echo "fo-$n@demo.test" >> "$CT_DIR/failover-acked.txt"
      else echo "$(date +%s.%N) $(status_of "$r")" >> "$CT_DIR/failover-write-failures.txt"; sleep 0.2; fi
    done
  ) &
  WRITER_PID=$!
  # Reads: GET /api/users (served by the replica) and logins, as in the other rehearsals.
  load_start failover 50 /api/users
  sleep 8
  [ -s "$CT_DIR/failover-acked.txt" ] || fail "no user created before the failover"
  t0=$(date +%s.%N)
  dc stop -t 60 postgres > "$CT_DIR/failover.log" 2>&1 || fail "docker-compose stop postgres"
  acked_at_stop=$(grep -c . "$CT_DIR/failover-acked.txt")
  stop_took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  promoted=$(psql_replica -c "select pg_promote()") && [ "$promoted" = t ] || fail "pg_promote: $promoted"
  t1=$(date +%s.%N)
  # Writes come back on the promoted replica, without a restart of the backends.
  back=""
  for _ in $(seq 300); do
    [ "$(grep -c . "$CT_DIR/failover-acked.txt")" -gt "$acked_at_stop" ] && { back=$(awk -v a="$t1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'); break; }
    sleep 0.2
  done
  [ -n "$back" ] || fail "no write acknowledged within 60 s of the promotion"
  load_end; r=$LOAD_RESULT
  touch "$CT_DIR/failover-stop"; wait "$WRITER_PID"
  get_failed=$(grep -o 'GET [0-9]*/[0-9]*' <<<"$r" | cut -d/ -f2)
  [ "$get_failed" = 0 ] || fail "reads failed during the failover: $r"
  [ "$(started)" = "$backends_before" ] || fail "a backend restarted: $backends_before -> $(started)"
  moved=$(dc logs --no-color backend 2>/dev/null | grep -c 'database primary moved' || true)
  [ "$moved" -ge 2 ] || fail "not every backend said it moved to the new primary ($moved lines)"
  # Every acknowledged write is on the new primary.
  acked=$(grep -c . "$CT_DIR/failover-acked.txt")
  psql_replica -c "select email from users where email like 'fo-%'" | sort > "$CT_DIR/failover-stored.txt"
  lost=$(comm -23 <(sort "$CT_DIR/failover-acked.txt") "$CT_DIR/failover-stored.txt" | grep -c . || true)
  [ "$lost" = 0 ] || fail "$lost acknowledged users missing from the new primary: $(comm -23 <(sort "$CT_DIR/failover-acked.txt") "$CT_DIR/failover-stored.txt" | head -3)"
  wfailed=$(grep -c . "$CT_DIR/failover-write-failures.txt" 2>/dev/null || true)
  # Each created user cost an Argon2id hash (19 MiB): the backends' peak memory stays well under their
  # 512 MB limit (glibc's arenas kept those blocks and a backend was OOM-killed here).
  peaks=$(for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=backend"); do
    podman exec "$c" sh -c 'awk "/^VmHWM:/ {printf \"%d MB \", \$2/1024}" /proc/1/status'; done)
  done_step "$r; $acked users acknowledged (${wfailed:-0} writes refused), all $acked on the promoted replica; stop took ${stop_took}s, writes back ${back}s after pg_promote; backends not restarted (peak memory ${peaks% })"
fi

finish
