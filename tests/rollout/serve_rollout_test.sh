#!/usr/bin/env bash
# `rlhf serve rollout` on loopback, answered to tests/python/rollout_client.py, then stopped with SIGTERM.
#   serve_rollout_test.sh RLHF_BINARY PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"; py="$2"; src="$3"
d=$(mktemp -d)
source "$src/tests/serve_python_client.sh"
"$rlhf" init-model --vocab-size 64 --out "$d/m" --run-dir "$d/r1" --set run.log_level=warn
serve_python_client "$py" "$src" "$d" "$src/tests/python/rollout_client.py" \
  "rlhf/tensor.proto rlhf/sample.proto rlhf/rollout.proto" "rollout worker: stopping" \
  "$rlhf" serve rollout --model "$d/m" --address @ADDRESS@ --run-dir "$d/r2" \
  --set rollout.capacity=64 --set rollout.slots=4
