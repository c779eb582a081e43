#!/usr/bin/env bash
# The sandbox and code-reward tests where the kernel really refuses user namespaces
# (tests/python/without_user_namespaces.py): the refusal tests pass, every test that needs isolation says
# it was skipped, and none dies (the SIGPIPE of a refused sandbox once killed the test process).
#   sandbox_without_user_namespaces_test.sh SCORING_TEST_BINARY PYTHON3 SOURCE_DIR
set -euo pipefail
bin="$1"; py="$2"; src="$3"
source "$src/tests/scoring/require_refusal.sh"
require_user_namespace_refusal "$py" "$src"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0
timeout -k 10 300 "$py" "$src/tests/python/without_user_namespaces.py" "$bin" --gtest_filter='Sandbox.*:CodeReward.*' \
  > "$out" 2>&1 || rc=$?
cat "$out"
[ "$rc" = 0 ] || { echo "the test process ended with status $rc"; exit 1; }
skipped=$(grep -o '^\[  SKIPPED \] [A-Za-z]*\.[A-Za-z]*' "$out" | sort -u | wc -l)
refusals=$(grep -c 'isolation is not available on this machine' "$out" || true)
for t in Sandbox.RefusesCleanlyWhereUserNamespacesAreRefused Sandbox.RefusesCleanlyWhereTheInnerNamespacesAreRefused \
         CodeReward.RefusedWhereIsolationIsMissingWhileTheScorerServesOn Sandbox.RefusesUnsafeFileNames; do
  grep -q "^\[       OK \] $t " "$out" || { echo "$t did not pass"; exit 1; }
done
# The eleven tests that need isolation: each skipped, with the reason.
[ "$skipped" = 11 ] && [ "$refusals" -ge 11 ] || { echo "expected 11 skipped tests with the reason, got $skipped / $refusals"; exit 1; }
echo "without user namespaces: the refusal tests passed, $skipped tests skipped with the reason, none died"
