#!/usr/bin/env bash
# `rlhf serve scorer` as its own process on loopback, answered to a python3-grpcio client, then stopped
# with SIGTERM. Bounded: every step has a timeout and the server is killed on any exit.
#   serve_scorer_test.sh RLHF_BINARY PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"; py="$2"; src="$3"
d=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$d"; }
trap cleanup EXIT
port=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
timeout 120 "$rlhf" serve scorer --address "127.0.0.1:$port" --run-dir "$d/r" \
  --set reward.exact_match_weight=1 --set reward.process_weight=0.5 > "$d/server.log" 2>&1 &
pid=$!
protoc --proto_path="$src/proto" --python_out="$d" rlhf/sample.proto rlhf/scoring.proto
ok=0
for i in $(seq 1 60); do
  if timeout 30 "$py" "$src/tests/python/scorer_client.py" "$d" "127.0.0.1:$port" > "$d/client.log" 2>&1; then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
cat "$d/client.log"
[ "$ok" = 1 ] || { echo "client never succeeded"; cat "$d/server.log"; exit 1; }
kill -TERM "$pid"
for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$pid" 2>/dev/null; then echo "server ignored SIGTERM"; exit 1; fi
wait "$pid"; rc=$?; pid=""
grep -q "scorer: stopping" "$d/server.log" || { cat "$d/server.log"; exit 1; }
echo "serve scorer: answered a python client and stopped cleanly (exit $rc)"
exit $rc
