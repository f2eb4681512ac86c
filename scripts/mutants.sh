#!/usr/bin/env bash
# Mutation testing of the pure cores with cargo-mutants (#32 point 3): scripts/mutants.sh [MODULE...]
#   MODULE: routing guard jwt cors gcra api_key config duration domain storage_key (default: all)
#   scripts/mutants.sh --list [MODULE...]   only count the mutants
#   scripts/mutants.sh --iterate [MODULE...] test again only what the last run of each module did not
#                                            catch (cargo-mutants' --iterate: after adding tests)
# Each module's mutants are built and tested one by one against the tests that prove that core: the
# package's unit tests plus the corpus replays and the differential parser test, narrowed by name to the
# module's own (after `--`: libtest runs the tests whose path contains any of the words; replaying every
# corpus takes ~30 s in a debug build). No process, no network: a mutant costs one incremental build of
# the crate and a few seconds of tests. The integration suites
# (tests/edge, backend/tests) are not run per mutant: a core this test set does not pin is a core whose
# proof hangs on a slow end-to-end test. Per module, mutants.out/MODULE/ holds cargo-mutants' own output
# (mutants.out/: caught.txt, missed.txt, … of its last run) and ledger.json (every mutant's last outcome,
# accumulated over --iterate runs), from which the script prints the score
# caught / viable, a timeout (30 s: the unit tests take ~5) counting as caught. Not in .ci/run: about 20-30 s
# per mutant on 2 cores.
# The tree is copied (rsync) into $MUTANTS_HOME/src before each module and mutated in place
# there, so one build directory serves every run incrementally; your checkout is never touched.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

declare -A PKG FILES TESTS RE
# RE (optional): only the mutants whose name matches (the pure functions of a file that also does I/O).
# routing: the route table (hosts, wildcard, path prefixes, methods) and its config-side ambiguity check.
PKG[routing]=gateway; FILES[routing]="gateway/src/edge/route.rs"
TESTS[routing]="--lib --test fuzz_corpora -- route router"
# The HTTP/1 guard: request smuggling, framing and head rules before Pingora parses.
PKG[guard]=gateway; FILES[guard]="gateway/src/edge/guard.rs"
TESTS[guard]="--lib --test fuzz_corpora --test head_differential -- guard http_head head"
# JWT verification and the tenant binding.
PKG[jwt]=gateway; FILES[jwt]="gateway/src/edge/auth/jwt.rs gateway/src/edge/auth/mod.rs"
TESTS[jwt]="--lib --test fuzz_corpora -- jwt auth"
PKG[cors]=gateway; FILES[cors]="gateway/src/edge/cors.rs"
TESTS[cors]="--lib --test fuzz_corpora -- cors"
# The in-process GCRA model (the Redis script is checked against it by tests/edge/gcra_script.rs).
PKG[gcra]=gateway; FILES[gcra]="gateway/src/edge/ratelimit/gcra.rs"
TESTS[gcra]="--lib"
# API-key parsing and checking (the store's cache and Redis tier are the integration tests' part).
PKG[api_key]=gateway; FILES[api_key]="gateway/src/edge/auth/api_key.rs"
RE[api_key]='\b(parse|check|has_scopes|presented)\b'
TESTS[api_key]="--lib --test fuzz_corpora -- api_key"
# Config validation: the route and entrypoint rules of config/mod.rs and config/routes/mod.rs.
PKG[config]=gateway; FILES[config]="gateway/src/config/mod.rs gateway/src/config/routes/mod.rs"
TESTS[config]="--lib --test fuzz_corpora -- config"
PKG[duration]=gateway; FILES[duration]="gateway/src/config/duration.rs"
TESTS[duration]="--lib"
# The backend's tenant-domain rules and storage-key rules.
PKG[domain]=backend; FILES[domain]="backend/src/domain.rs"
TESTS[domain]="--lib"
PKG[storage_key]=backend; FILES[storage_key]="backend/src/storage.rs"
RE[storage_key]='\b(check_path|key|meta_key)\b'
TESTS[storage_key]="--lib"
ALL=(routing guard jwt cors gcra api_key config duration domain storage_key)

list_only=0
iterate=()
if [ "${1:-}" = "--list" ]; then list_only=1; shift; fi
if [ "${1:-}" = "--iterate" ]; then iterate=(--iterate); shift; fi
modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=("${ALL[@]}")
for m in "${modules[@]}"; do
  [ -n "${PKG[$m]:-}" ] || { echo "unknown module '$m' (one of: ${ALL[*]})" >&2; exit 2; }
done

if ! command -v cargo-mutants >/dev/null 2>&1; then
  log "installing cargo-mutants 27.0.0 (cargo install, a few minutes once)"
  cargo install cargo-mutants@27.0.0 --locked >&2
fi

file_args() {
  local a=()
  for f in ${FILES[$1]}; do a+=(--file "$f"); done
  [ -z "${RE[$1]:-}" ] || a+=(--re "${RE[$1]}")
  echo "${a[@]}"
}

if [ $list_only = 1 ]; then
  for m in "${modules[@]}"; do
    # shellcheck disable=SC2046
    printf '%-12s %4d mutants\n' "$m" "$(cargo mutants --list $(file_args "$m") | wc -l)"
  done
  exit 0
fi

ensure_build_deps
command -v rsync >/dev/null || ensure_debs rsync
# The guard's differential test runs Python's h11.
ensure_py_tools

home="${MUTANTS_HOME:-$HOME/.cache/aggios-edge/mutants}"
out="${MUTANTS_OUT:-$ROOT/mutants.out}"
mkdir -p "$home/src" "$out"
# Debug info off: most of a mutant's build is linking the test binaries.
export CARGO_TARGET_DIR="$home/target" CARGO_PROFILE_TEST_DEBUG=0 CARGO_PROFILE_DEV_DEBUG=0
export CARGO_INCREMENTAL=1

summary="$out/summary.md"
for m in "${modules[@]}"; do
  log "mutants of $m (${FILES[$m]}), tests: ${TESTS[$m]}"
  [ ${#iterate[@]} -gt 0 ] || rm -rf "$out/$m"
  # A fresh copy for each module, compared by content and written with the time of the copy: copied
  # with the checkout's (older) mtimes, cargo took the build of the last mutant as up to date and the
  # next baseline ran a mutated binary.
  rsync -rlp --checksum --delete --exclude /target --exclude /mutants.out --exclude /.git "$ROOT/" "$home/src/"
  # And the package's sources newer than any build: its baseline is compiled from them, whatever ran last.
  find "$home/src/${PKG[$m]}" -name '*.rs' -exec touch {} +
  # shellcheck disable=SC2046
  (cd "$home/src" && cargo mutants "${iterate[@]}" --in-place --no-shuffle --package "${PKG[$m]}" $(file_args "$m") \
    --timeout "${MUTANTS_TIMEOUT:-30}" --build-timeout "${MUTANTS_BUILD_TIMEOUT:-900}" \
    --output "$out/$m" -- ${TESTS[$m]}) || true
  # The module's ledger (mutant name -> last outcome) accumulates over --iterate runs: cargo-mutants'
  # own files keep only what the last run tested.
  if ! python3 - "$out/$m" "${#iterate[@]}" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
ledger_path = d / "ledger.json"
ledger = json.loads(ledger_path.read_text()) if sys.argv[2] != "0" and ledger_path.exists() else {}
run = json.loads((d / "mutants.out" / "outcomes.json").read_text())["outcomes"]
base = [o for o in run if o["scenario"] == "Baseline"]
if base and base[0]["summary"] != "Success":
    sys.exit(f"the unmutated tree failed its tests: nothing recorded (see {d}/mutants.out/log/baseline.log)")
for o in run:
    if isinstance(o["scenario"], dict):
        ledger[o["scenario"]["Mutant"]["name"]] = o["summary"]
ledger_path.write_text(json.dumps(ledger, indent=1, sort_keys=True))
PY
  then
    continue
  fi
  d="$out/$m"
  tally() { python3 -c "import json,sys; l=json.load(open('$d/ledger.json')); print(sum(v in sys.argv[1:] for v in l.values()))" "$@"; }
  caught=$(tally CaughtMutant Timeout); missed=$(tally MissedMutant); unviable=$(tally Unviable)
  viable=$((caught + missed))
  score=$(awk -v k=$caught -v v=$viable 'BEGIN { if (v) printf "%.1f", 100 * k / v; else printf "-" }')
  line="| $m | ${FILES[$m]} | $caught / $viable | $score % | $unviable |"
  echo "$line"
  echo "$(date -u +%FT%TZ) $line" >>"$summary"
  if [ "$missed" -gt 0 ]; then
    echo "missed:"
    python3 -c "import json; [print('  ' + k) for k, v in sorted(json.load(open('$d/ledger.json')).items()) if v == 'MissedMutant']"
  fi
done
