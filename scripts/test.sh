#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine: installs what is missing, starts what the
# tests need, then formatting, lints and the test suites.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_deps
ensure_postgres
ensure_redis
# Rate-limit tests start private redis-server processes (outage, TLS, a 3-node cluster) and make
# throw-away certificates with openssl.
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || ensure_debs redis-server redis-tools
ensure_debs openssl
# loadtest's compare smoke test: nginx as the peer (the harness would install it too), DejaVu Sans for its
# chart's text, taskset to pin each process.
ensure_debs nginx-light fonts-dejavu-core util-linux
# The upgrade-socket tests start a stranger of another uid with setpriv (util-linux) running Debian's
# python3 (a pyenv or venv python under /root is not reachable by that uid).
[ -x /usr/bin/python3 ] || ensure_debs python3
# The alert rules as code are checked and unit-tested with promtool (gateway/tests/edge/observability.rs).
command -v promtool >/dev/null || ensure_debs prometheus
# ACME tests run a real CA: pebble and its DNS server pebble-challtestsrv (one Debian package), and an
# authoritative DNS server for DNS-01 over RFC 2136 (Knot, queried with kdig); the exec hook uses curl.
ensure_debs pebble knot knot-dnsutils curl
# The compose file is checked by Debian's docker-compose (config only: no engine needed).
ensure_debs docker-compose
# HAProxy checks compose's edge-lb config (`haproxy -c`, gateway/tests/edge/deployment.rs).
command -v haproxy >/dev/null || ensure_debs haproxy
ensure_s3s_fs
# Deployment files are checked offline: Kubernetes manifests against the API schemas (kubernetes-validate),
# Postgres backups restored into a throw-away cluster (the PG_BIN_DIR tools).
ensure_py_tools
# The https entrypoint's TLS configuration is scanned (sslyze).
ensure_tls_scanner
# The admin dashboard page is tested in a real browser (gateway/tests/edge/dashboard.rs).
ensure_browser_tools
export PG_BIN_DIR="$(pg_bin_dir)"

# Databases left by interrupted test runs (each backend test creates its own aggios_t_* database).
for db in $(psql "$PG_ADMIN_URL" -Atqc "select datname from pg_database where datname like 'aggios_t_%'"); do
  psql "$PG_ADMIN_URL" -qc "drop database if exists $db with (force)" >/dev/null || true
done
export TEST_PG_ADMIN_URL="$PG_ADMIN_URL" TEST_REDIS_URL="${TEST_REDIS_URL:-$REDIS_URL_DEFAULT}"

log "module import cycles and layers (scripts/module-cycles.py)"
# The checker must see a known cycle, or its silence on the crates proves nothing.
if python3 scripts/module-cycles.py /dev/null scripts/fixtures/module-cycle >/dev/null; then
  echo "scripts/module-cycles.py missed the fixture's cycle" >&2
  exit 1
fi
# Nor may it miss a module that names a later layer.
if python3 scripts/module-cycles.py /dev/null --layers scripts/fixtures/module-layer/layers \
  scripts/fixtures/module-layer >/dev/null; then
  echo "scripts/module-cycles.py missed the fixture's layering violation" >&2
  exit 1
fi
python3 scripts/module-cycles.py scripts/module-cycles.allow --layers scripts/module-layers \
  gateway backend loadtest contracts

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test (target dir: $CARGO_TARGET_DIR)"
cargo test --workspace --locked

# The deployment for real: the images built offline, the compose stack up under podman and its operations
# rehearsed under load (scripts/compose-test.sh, about 7 minutes after the release build; COMPOSE_TEST=0
# skips it).
if [ "${COMPOSE_TEST:-1}" != 0 ]; then
  log "the compose stack for real (scripts/compose-test.sh)"
  bash scripts/compose-test.sh
fi
