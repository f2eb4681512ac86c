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
