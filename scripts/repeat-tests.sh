#!/usr/bin/env bash
# Runs the README's test command N times in a row on this tree and prints
# "N passed, M failed" with the names of the tests that failed. The whole output of each
# failed run is kept in target/repeat-failures/ (a flake's cause is in it).
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"; pass=0; fail=0; names=""
for i in $(seq 1 "$n"); do
  log=$(mktemp)
  if bash scripts/test.sh >"$log" 2>&1; then pass=$((pass+1)); else
    fail=$((fail+1))
    names="$names $(grep -E '^    [^ ]+$|^test .* FAILED' "$log" | sed 's/^test //; s/ \.\.\. FAILED//' | tr -s ' \n' ' ')"
    mkdir -p target/repeat-failures
    cp "$log" "target/repeat-failures/run-$i.log"
    echo "run $i failed: its output is in target/repeat-failures/run-$i.log" >&2
  fi
  rm -f "$log"; echo "run $i: $pass passed, $fail failed" >&2
done
echo "$pass passed, $fail failed"
[ -n "$names" ] && echo "failing:$names"
[ "$fail" -eq 0 ]
