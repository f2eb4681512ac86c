#!/usr/bin/env bash
# Runs the local stack on loopback: builds the gateway and serves config/dev.toml
# (http://127.0.0.1:8080, admin http://127.0.0.1:9000). Ctrl-C stops it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_deps

log "building (release)"
cargo build --release --locked -p gateway

log "gateway: http://127.0.0.1:8080  admin: http://127.0.0.1:9000/api/routes"
log "try: curl -H 'Host: acme.aggios.localhost' http://127.0.0.1:8080/api/x"
exec "$CARGO_TARGET_DIR/release/gateway" run --config config/dev.toml
