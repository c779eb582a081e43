#!/usr/bin/env bash
# Repeats the tests that are sensitive to timing (servers, several processes or threads, deadlines: the CTest
# label `timing`) to find a flaky one before CI does. Builds first (scripts/build.sh), then runs each test
# up to N times, stopping a test at its first failure, and prints one summary line:
#   flake_check: LABEL: T tests x up to N runs: R runs, F failed (names)
#
#   bash scripts/flake_check.sh [-n N] [-l LABEL] [-R REGEX] [-j JOBS]
#     -n N      runs per test (default 10; `--repeat until-fail:N`)
#     -l LABEL  CTest label to repeat (default timing; `slow` holds the multi-minute whole-run tests)
#     -R REGEX  only the tests whose name matches (e.g. -R WeightsSwap -n 200)
#     -j JOBS   tests run at once (default 1: the tests' own timing, not a machine loaded by their siblings)
# Exit status: 0 when every run passed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
n=10 label=timing regex="" jobs=1
while getopts "n:l:R:j:" opt; do
  case "$opt" in
    n) n="$OPTARG" ;;
    l) label="$OPTARG" ;;
    R) regex="$OPTARG" ;;
    j) jobs="$OPTARG" ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
bash "$root/scripts/build.sh"
bash "$root/scripts/npm_refs.sh" "$build/npm" >/dev/null
cd "$build"
select=(-L "^${label}\$")
[ -n "$regex" ] && select+=(-R "$regex")
tests=$(ctest -N "${select[@]}" | sed -n 's/^ *Test *#[0-9]*: //p')
count=$(printf '%s\n' "$tests" | grep -c . || true)
[ "$count" -gt 0 ] || { echo "flake_check: no test has label '$label'${regex:+ and matches '$regex'}"; exit 2; }
echo "flake_check: repeating $count tests labelled '$label' up to $n times each"
log="$build/flake_check.log"
start=$(date +%s)
rc=0
# CTest reruns a test until it fails or has passed N times, and prints one "Test #k: name ... Passed" (or
# ***Failed, ***Timeout, ...) line per run.
ctest "${select[@]}" --repeat "until-fail:$n" -j "$jobs" --timeout 900 --output-on-failure > "$log" 2>&1 || rc=$?
result_lines() { grep -E '^ *([0-9]+/[0-9]+ )?Test +#[0-9]+: [^ ]+ \.*' "$log" || true; }
runs=$(result_lines | grep -c . || true)
failed=$(result_lines | { grep -v ' Passed ' || true; } | sed -E 's/^.*Test +#[0-9]+: ([^ ]+) .*/\1/' | sort -u)
nfailed=$(printf '%s\n' "$failed" | grep -c . || true)
echo "flake_check: $label: $count tests x up to $n runs: $runs runs in $(( $(date +%s) - start )) s, $nfailed failed${failed:+ ($(echo $failed | tr '\n' ' '))}; log: $log"
[ "$rc" = 0 ] && [ "$nfailed" = 0 ]
