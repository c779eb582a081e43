#!/usr/bin/env bash
# `rlhf serve scorer` (exact match + the process step checker) on loopback, answered to
# tests/python/scorer_client.py, then stopped with SIGTERM.
#   serve_scorer_test.sh RLHF_BINARY PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"; py="$2"; src="$3"
d=$(mktemp -d)
source "$src/tests/serve_python_client.sh"
serve_python_client "$py" "$src" "$d" "$src/tests/python/scorer_client.py" \
  "rlhf/sample.proto rlhf/scoring.proto" "scorer: stopping" \
  "$rlhf" serve scorer --address @ADDRESS@ --run-dir "$d/r" \
  --set reward.exact_match_weight=1 --set reward.process_weight=0.5
