#!/usr/bin/env bash
# Fuzz smoke run: builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time,
# starting from the committed seeds (fuzz/corpus/<target>/). Exits non-zero if any target
# crashes (a panic, a failed invariant, a sanitizer report, an input running over 10 s, or
# over 2 GB of memory) or fails to build.
#
#   bash scripts/fuzz-smoke.sh                       # every target, FUZZ_SECONDS (20) each
#   FUZZ_SECONDS=600 bash scripts/fuzz-smoke.sh ring_reader     # one target, longer
#
# Environment:
#   FUZZ_SECONDS      seconds per target (default 20)
#   FUZZ_JOBS         targets fuzzed at once (default 2, one per core of the CI machine)
#   FUZZ_SANITIZER    cargo-fuzz sanitizer (default address; "none" builds and runs faster)
#   FUZZ_ARGS         extra libFuzzer flags (e.g. "-use_value_profile=1")
#   CARGO_TARGET_DIR  where to build (default target/fuzz)
#   FUZZ_WORKDIR      scratch corpora, crash files and logs (default
#                     $CARGO_TARGET_DIR/smoke; emptied per target at its start); never
#                     fuzz/corpus/, whose seeds are only read
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer); on the stable toolchain this
# sets RUSTC_BOOTSTRAP=1 for the fuzz build only. If cargo-fuzz is missing it is installed
# (`cargo install cargo-fuzz --locked`: about 1.5 min, once per machine).
#
# Runtime on this 2-core machine (fuzz/README.md has the measurements): 95 s from an empty
# target dir on a quiet machine (build 52 s, fuzzing 43 s = 2 x (FUZZ_SECONDS + ~2 s)),
# ~45 s with a warm target dir; up to ~2.5 min while other builds load the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
jobs="${FUZZ_JOBS:-2}"
sanitizer="${FUZZ_SANITIZER:-address}"
read -r -a extra <<<"${FUZZ_ARGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/fuzz}"
work="${FUZZ_WORKDIR:-$CARGO_TARGET_DIR/smoke}"
export RUSTC_BOOTSTRAP=1
all_targets=(frame_decode frame_reassemble hello_parse ring_reader)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz not found: installing it"
  cargo install cargo-fuzz --locked
fi

start=$(date +%s)
echo "=== build (${targets[*]}; sanitizer $sanitizer)"
for t in "${targets[@]}"; do
  cargo fuzz build --sanitizer "$sanitizer" "$t"
done
built=$(date +%s)

# One target: new inputs go to its scratch corpus (the first dir); the seeds are only read.
# The binary was just built; `cargo fuzz run` only checks that it is up to date.
fuzz_one() {
  local t=$1 corpus="$work/corpus/$1" artifacts="$work/artifacts/$1"
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cargo fuzz run --sanitizer "$sanitizer" "$t" "$corpus" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 ${extra[@]+"${extra[@]}"} \
    >"$work/$t.log" 2>&1
}

echo "=== fuzzing ${seconds}s per target, $jobs at a time"
mkdir -p "$work"
declare -A pid_of
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  fuzz_one "$t" &
  pid_of[$t]=$!
done

failed=()
for t in "${targets[@]}"; do
  echo "--- $t"
  if wait "${pid_of[$t]}"; then
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$t.log" || true
  else
    failed+=("$t")
    echo "FAILED: $t (log: $work/$t.log)"
    grep -E 'panicked at|^SUMMARY|ERROR: libFuzzer|Test unit written' "$work/$t.log" ||
      tail -n 30 "$work/$t.log"
  fi
done

end=$(date +%s)
echo "=== build $((built - start)) s, fuzzing $((end - built)) s, total $((end - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}; crash files in $work/artifacts/<target>/" >&2
  echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <crash file>" >&2
  exit 1
fi
echo "no crashes"
