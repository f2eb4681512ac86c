#!/usr/bin/env bash
# The side-by-side benchmark, kept under its old name: loadtest/compare.sh --scenario plain with every peer
# and bare Pingora, PASSES rounds of DURATION seconds (COUNT=1 adds instruction counts). The gateway's own
# wrk instruments (MODE=tls, ablation, multicore, ratelimit) are `loadtest compare` (scenarios tls_keepalive and
# tls_handshake, --bare-pingora, --variants, --threads).
# Usage: loadtest/bench.sh [PASSES] [DURATION_SECONDS]
set -euo pipefail
extra=(); [ "${COUNT:-0}" = 1 ] && extra=(--instructions)
exec "$(dirname "$0")/compare.sh" --scenario plain --rounds "${1:-3}" --duration "${2:-10}s" "${extra[@]}"
