#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs the whole test suite with CTest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh"
build="${BUILD_DIR:-$root/build}"
bash "$root/scripts/npm_refs.sh" "$build/npm"
cd "$build"
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 900 "$@"
