#!/usr/bin/env bash
# The fuzzing figures: tests/security/fuzz_test.sh with N messages per service (default 10,000) against the
# rollout worker, the scorer and the learner, each its own process on loopback with a bearer token. Prints
# the machine, one line per service (calls, status codes, resident memory after the first 10% of calls and
# at the end, alive) and last one JSON line of the figures.
#   bench/fuzz_bench.sh [N]   (BUILD_DIR picks the build, default build/)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
n="${1:-10000}"
[ -x "$build/cli/rlhf" ] || { echo "build rlhf first: cmake --build $build --target rlhf"; exit 1; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; $n messages per service"
bash "$root/tests/security/fuzz_test.sh" "$build/cli/rlhf" /usr/bin/python3 "$root" "$n" 2> /dev/null
