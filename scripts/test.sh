#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine: installs what is missing, starts what the
# tests need, then formatting, lints and the test suites.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_deps

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test (target dir: $CARGO_TARGET_DIR)"
cargo test --workspace --locked
