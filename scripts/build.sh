#!/usr/bin/env bash
# Installs what is missing, configures and builds (Release) into build/ (or $BUILD_DIR): every target, or
# only the targets named as arguments (scripts/demo.sh builds just `rlhf`).
#   bash scripts/build.sh [TARGET...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup.sh"
build="${BUILD_DIR:-$root/build}"
jobs="${JOBS:-$(nproc)}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build" -j "$jobs" "${targets[@]}"
