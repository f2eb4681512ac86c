# Shared helpers for the set-up commands. Sourced, not run.
# Everything here is idempotent: it installs only what is missing and starts only what is not running.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aggios-edge/target}"
STATE_DIR="${AGGIOS_STATE_DIR:-$ROOT/.stack}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

APT_UPDATED=0
# ensure_debs PKG... — install the Debian packages that are not installed yet.
ensure_debs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_rust — cargo must exist; rustup toolchains cannot be downloaded here, so say so clearly.
ensure_rust() {
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup, Rust >= 1.85)"
}

# ensure_build_deps — what Pingora and the workspace need to compile (cmake for zlib-ng via flate2).
ensure_build_deps() {
  ensure_debs cmake gcc g++ make pkg-config curl ca-certificates
  ensure_rust
}

# wait_port HOST PORT SECONDS — wait until something accepts TCP connections there.
wait_port() {
  local host=$1 port=$2 secs=${3:-30} i=0
  while ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    i=$((i + 1)); [ $i -gt $((secs * 10)) ] && return 1; sleep 0.1
  done
  exec 3>&- 3<&- 2>/dev/null || true
}

PG_ADMIN_URL="${TEST_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS_URL_DEFAULT="redis://127.0.0.1:6379"

# ensure_postgres — a PostgreSQL server on 127.0.0.1:5432 that the `postgres` role reaches without a
# password from loopback (installed and started when missing; loopback trust is added for dev/test only).
ensure_postgres() {
  command -v psql >/dev/null || ensure_debs postgresql-client
  if psql "$PG_ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1; then return 0; fi
  ensure_debs postgresql
  local ver; ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  [ -n "$ver" ] || die "postgresql installed but no cluster in /etc/postgresql"
  if ! wait_port 127.0.0.1 5432 1; then
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_port 127.0.0.1 5432 30 || die "PostgreSQL did not start on 127.0.0.1:5432"
  fi
  if ! psql "$PG_ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    local hba="/etc/postgresql/$ver/main/pg_hba.conf"
    log "allowing password-less loopback connections in $hba (dev/test machine)"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    sleep 1
    psql "$PG_ADMIN_URL" -Atqc 'select 1' >/dev/null || die "cannot connect to PostgreSQL as $PG_ADMIN_URL"
  fi
}

# ensure_redis — a Redis server on 127.0.0.1:6379.
ensure_redis() {
  if command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then return 0; fi
  ensure_debs redis-server
  log "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile "${TMPDIR:-/tmp}/aggios-redis.log" >/dev/null
  local i=0
  until [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; do
    i=$((i + 1)); [ $i -gt 100 ] && die "Redis did not start"; sleep 0.1
  done
}

# ensure_s3s_fs — the S3-compatible server the tests use (verifies SigV4 and presigned URLs).
# 0.14.1: later versions need a newer rustc than this machine's.
ensure_s3s_fs() {
  if command -v s3s-fs >/dev/null; then export S3S_FS_BIN="$(command -v s3s-fs)"; return 0; fi
  if [ -x "$HOME/.cargo/bin/s3s-fs" ]; then export S3S_FS_BIN="$HOME/.cargo/bin/s3s-fs"; return 0; fi
  log "installing s3s-fs 0.14.1 (cargo install, a few minutes once)"
  cargo install s3s-fs@0.14.1 --locked --features binary >&2
  export S3S_FS_BIN="$HOME/.cargo/bin/s3s-fs"
}

# make_venv DIR — a Python venv at DIR (Debian's python3 and python3-venv installed when missing).
make_venv() {
  command -v python3 >/dev/null || ensure_debs python3
  python3 -m venv "$1" 2>/dev/null || { ensure_debs python3-venv; python3 -m venv "$1"; }
}

# pg_bin_dir — the newest installed PostgreSQL server binaries (initdb, pg_ctl), for private clusters.
# Python tools the tests call, in a venv of their own: kubernetes-validate (offline schema checks of
# compose/kubernetes/) and Authlib with requests (the third party of the OAuth2 tests: a real OAuth2
# client library), grpcio (a real gRPC client and server for the gateway's gRPC tests), aioquic (a real
# HTTP/3 client for the gateway's QUIC entrypoint), h2 with hpack (the HTTP/2 frame-level conformance
# suite's encoder), h11 (the independent HTTP/1 parser of the differential test). Exports
# KUBERNETES_VALIDATE, OAUTH_PYTHON, GRPC_PYTHON, H3_PYTHON, H2_PYTHON and H1_PYTHON.
ensure_py_tools() {
  local venv="$HOME/.cache/aggios-edge/tools"
  [ -x "$venv/bin/python" ] || make_venv "$venv"
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    log "pip install kubernetes-validate (into $venv)"
    "$venv/bin/pip" install -q kubernetes-validate==1.37.0
  fi
  if ! "$venv/bin/python" -c 'import authlib, requests' 2>/dev/null; then
    log "pip install authlib requests (into $venv)"
    "$venv/bin/pip" install -q authlib==1.9.10 requests==2.34.2
  fi
  if ! "$venv/bin/python" -c 'import grpc' 2>/dev/null; then
    log "pip install grpcio (into $venv)"
    "$venv/bin/pip" install -q grpcio==1.76.0
  fi
  if ! "$venv/bin/python" -c 'import aioquic' 2>/dev/null; then
    log "pip install aioquic (into $venv)"
    "$venv/bin/pip" install -q aioquic==1.7.2
  fi
  if ! "$venv/bin/python" -c 'import hpack, h2, h11' 2>/dev/null; then
    log "pip install h2 h11 (into $venv)"
    "$venv/bin/pip" install -q h2==4.3.0 h11==0.16.0
  fi
  export KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"
  export OAUTH_PYTHON="$venv/bin/python"
  export GRPC_PYTHON="$venv/bin/python"
  export H3_PYTHON="$venv/bin/python"
  export H2_PYTHON="$venv/bin/python"
  export H1_PYTHON="$venv/bin/python"
}

# The TLS configuration scan (gateway/tests/edge/tls_scan.rs): sslyze from PyPI in a venv of its own
# (it pins a cryptography release older than the tools venv's). Exports SSLYZE.
ensure_tls_scanner() {
  local venv="$HOME/.cache/aggios-edge/sslyze"
  if [ ! -x "$venv/bin/sslyze" ]; then
    make_venv "$venv"
    log "pip install sslyze (into $venv)"
    "$venv/bin/pip" install -q sslyze==6.3.1
  fi
  export SSLYZE="$venv/bin/sslyze"
}

# The dashboard page's browser test: Debian's chromium driven by playwright-core (npm, pinned by
# gateway/tests/dashboard/package-lock.json) installed outside the clone. Exports DASHBOARD_NODE_MODULES.
ensure_browser_tools() {
  command -v chromium >/dev/null || ensure_debs chromium
  command -v npm >/dev/null || ensure_debs nodejs npm
  local dir="$HOME/.cache/aggios-edge/node" src="$ROOT/gateway/tests/dashboard"
  mkdir -p "$dir"
  if ! cmp -s "$src/package-lock.json" "$dir/package-lock.json" || [ ! -d "$dir/node_modules/playwright-core" ]; then
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    log "npm ci playwright-core (into $dir)"
    (cd "$dir" && npm ci --no-audit --no-fund >&2)
  fi
  export DASHBOARD_NODE_MODULES="$dir/node_modules"
}

pg_bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}
