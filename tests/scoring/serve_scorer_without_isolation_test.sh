#!/usr/bin/env bash
# `rlhf serve scorer` with the code reward on a machine whose kernel refuses user namespaces
# (tests/python/without_user_namespaces.py: a real refusal, ENOSPC, or the machine's own): the scorer
# starts, logs why the code reward is refused, answers every sample with FAILED_PRECONDITION and that
# reason, keeps serving, and stops on SIGTERM.
#   serve_scorer_without_isolation_test.sh RLHF_BINARY PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"; py="$2"; src="$3"
source "$src/tests/scoring/require_refusal.sh"
require_user_namespace_refusal "$py" "$src"
d=$(mktemp -d)
source "$src/tests/serve_python_client.sh"
serve_python_client "$py" "$src" "$d" "$src/tests/python/scorer_refusal_client.py" \
  "rlhf/sample.proto rlhf/scoring.proto rlhf/health.proto" "scorer: stopping" \
  "$py" "$src/tests/python/without_user_namespaces.py" \
  "$rlhf" serve scorer --address @ADDRESS@ --run-dir "$d/r" \
  --set reward.exact_match_weight=1 --set reward.code_weight=1 --set reward.code_command=true
grep -q "the code reward is refused on this machine" "$d/server.log" || { cat "$d/server.log"; exit 1; }
echo "the scorer said why: $(grep -m1 -o 'the code reward is refused on this machine.*' "$d/server.log" | cut -c1-160)"
