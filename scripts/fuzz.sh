#!/usr/bin/env bash
# A fuzzing campaign: scripts/fuzz.sh TARGET [SECONDS]   (TARGET "all": each target in turn)
#                     scripts/fuzz.sh TARGET --runs N     (until N executions)
#                     scripts/fuzz.sh TARGET --cmin       (minimise the committed corpus)
# Targets (properties in gateway/src/fuzz.rs and backend/src/fuzz.rs): config, router, http_head, jwt,
# api_key, cors_origin, storage_key, proxy_protocol. Coverage-guided libFuzzer on the stable toolchain (`-s none`: no
# sanitizer). New inputs that widen coverage land in fuzz/corpus/TARGET (commit them after --cmin);
# a crash is saved under fuzz/artifacts/TARGET and must become a unit test.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(config router http_head jwt api_key cors_origin storage_key proxy_protocol)
target=${1:?usage: scripts/fuzz.sh TARGET|all [SECONDS | --runs N | --cmin]}
shift
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/aggios-edge/fuzz-target}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (cargo install, about a minute once)"
  cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null 2>&1; then
  echo "==> installing g++ (libFuzzer is C++)"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y g++ >/dev/null
fi

run_one() {
  local t=$1; shift
  local args=()
  case "${1:-}" in
    --runs) args=(-runs="$2") ;;
    --cmin)
      (cd fuzz && cargo fuzz cmin -s none "$t" "corpus/$t")
      return ;;
    "") args=(-max_total_time=60) ;;
    *) args=(-max_total_time="$1") ;;
  esac
  local dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
  echo "==> fuzzing $t ${args[*]}"
  (cd fuzz && cargo fuzz run -s none "$t" "corpus/$t" -- "${args[@]}" "${dict[@]}" -print_final_stats=1 2>&1) \
    | tee "/tmp/aggios-fuzz-$t.log" | grep -E "^(stat::|#[0-9]+ *DONE|==|SUMMARY|Done)" || true
  if grep -q "^==.*ERROR\|panicked\|deadly signal" "/tmp/aggios-fuzz-$t.log"; then
    echo "!! $t: a crash; see fuzz/artifacts/$t and /tmp/aggios-fuzz-$t.log" >&2
    return 1
  fi
}

if [ "$target" = all ]; then
  for t in "${TARGETS[@]}"; do run_one "$t" "$@"; done
else
  run_one "$target" "$@"
fi
