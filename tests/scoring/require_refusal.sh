# Sourced by the tests that need a real user-namespace refusal (tests/python/without_user_namespaces.py).
# require_user_namespace_refusal PYTHON3 SOURCE_DIR: returns when one can be made here; otherwise the test
# is skipped (exit 77, CTest's SKIP_RETURN_CODE), or fails when the wrapper itself fails.
require_user_namespace_refusal() {
  local probe=0
  "$1" "$2/tests/python/without_user_namespaces.py" true || probe=$?
  [ "$probe" = 77 ] && { echo "skipped: no real user-namespace refusal can be made on this machine"; exit 77; }
  [ "$probe" = 0 ] || { echo "the refusal wrapper failed ($probe)"; exit 1; }
}
