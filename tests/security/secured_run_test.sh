#!/usr/bin/env bash
# The main example (grpo_arithmetic) as separate local processes with TLS and a bearer token on every
# server and channel (rlhf serve rollout, scorer and learner; rlhf train coordinating):
#   - a python3-grpcio client with no token, a wrong token and the right token gets UNAUTHENTICATED,
#     UNAUTHENTICATED and OK from every service of every server, and a plaintext client is refused;
#   - the run completes over TLS with a ledger that adds up, as separate processes and under one mpirun
#     (rlhf run: roles by rank, addresses from the store);
#   - the token appears in no log, no run folder (config dumps) and no process's command line;
#   - `serve` with no address listens on loopback only; a non-loopback address without TLS is refused.
# Bounded: every process has a timeout and is killed on exit.
#   secured_run_test.sh RLHF PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"; py="$2"; root="$3"
d="$(mktemp -d)"
source "$root/tests/processes.sh"
q="--set run.log_level=warn"
bash "$root/tests/make_test_certs.sh" "$d/tls"
token=$(cat "$d/tls/token")
sec=(--set rpc.tls_cert_file="$d/tls/server.pem" --set rpc.tls_key_file="$d/tls/server.key"
     --set rpc.tls_ca_file="$d/tls/ca.pem" --set rpc.token_file="$d/tls/token")

"$py" "$root/examples/arithmetic.py" "$d/max" --op max > /dev/null
"$rlhf" train-tokenizer --corpus "$d/max/corpus.txt" --merges 1 --out "$d/tok" --run-dir "$d/r/tok" $q
"$rlhf" init-model --hidden-size 32 --layers 2 --heads 4 --kv-heads 2 --intermediate-size 64 --vocab-size 300 \
  --tokenizer "$d/tok" --seed 1 --out "$d/m" --run-dir "$d/r/init" $q
few=(--model "$d/m" $q --set run.threads=1 --set sft.max_steps=2 --set rl.steps=3 --set rl.rollout_batch_size=4
     --set eval.max_prompts=8 --set eval.every=0 --set rl.data.path="$d/max/prompts.jsonl")

echo "== grpo_arithmetic as separate processes, TLS and a token everywhere"
ports=($(free_ports "$py" 3))
timeout -k 10 300 "$rlhf" serve rollout --model "$d/m" --address "127.0.0.1:${ports[0]}" --run-dir "$d/r/rollout" \
  --set run.threads=1 "${sec[@]}" $q > "$d/rollout.log" 2>&1 &
pids+=($!)
timeout -k 10 300 "$rlhf" serve scorer --address "127.0.0.1:${ports[1]}" --set reward.exact_match_weight=1 \
  --run-dir "$d/r/scorer" --set run.threads=1 "${sec[@]}" $q > "$d/scorer.log" 2>&1 &
pids+=($!)
timeout -k 10 300 "$rlhf" serve learner --config "$root/examples/grpo_arithmetic.yaml" "${few[@]}" --stages grpo \
  --address "127.0.0.1:${ports[2]}" --run-dir "$d/separate/learner" "${sec[@]}" > "$d/learner.log" 2>&1 &
learner_pid=$!
pids+=($learner_pid)

protoc --proto_path="$root/proto" --python_out="$d" rlhf/health.proto rlhf/learner.proto rlhf/rollout.proto \
  rlhf/scoring.proto rlhf/sample.proto rlhf/tensor.proto
timeout 150 "$py" "$root/tests/python/auth_client.py" "$d" "$d/tls/ca.pem" "$d/tls/token" "$d/tls/wrong-token" \
  "rollout=127.0.0.1:${ports[0]}" "scorer=127.0.0.1:${ports[1]}" "learner=127.0.0.1:${ports[2]}"
ps -eo args > "$d/ps.txt"

timeout 300 "$rlhf" train --config "$root/examples/grpo_arithmetic.yaml" "${few[@]}" --stages grpo \
  --set "roles.rollout_addresses=[127.0.0.1:${ports[0]}]" --set "roles.scorer_address=127.0.0.1:${ports[1]}" \
  --set "roles.learner_address=127.0.0.1:${ports[2]}" --set roles.max_attempts=30 "${sec[@]}" \
  --run-dir "$d/separate/coordinator" > "$d/coordinator.log" 2>&1 || { cat "$d/coordinator.log"; exit 1; }
ps -eo args >> "$d/ps.txt"
wait "$learner_pid" || { echo "the learner failed"; cat "$d/learner.log"; exit 1; }
"$py" - "$d/separate/coordinator/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["steps"] == 3 and s["duplicates"] == 0 and s["missing"] == 0, s
assert s["roles"]["rollout"] == "remote" and s["roles"]["scorer"] == "remote", s["roles"]
assert s["roles"]["learner"].startswith("127.0.0.1:"), s["roles"]
print(f"secured run: {s['steps']} steps, {s['prompts_trained']} prompts trained, weights by {s['roles']['weights']}")
PY

echo "== the same under one mpirun (rlhf run: a learner, two rollout workers, a scorer), TLS and the token"
OMP_WAIT_POLICY=passive timeout -k 10 300 mpirun --allow-run-as-root --oversubscribe -x OMP_WAIT_POLICY -np 4 \
  "$rlhf" run --config "$root/examples/grpo_arithmetic.yaml" "${few[@]}" --stages grpo \
  --set cluster.learners=1 --set cluster.rollout_workers=2 --set cluster.scorers=1 "${sec[@]}" \
  --run-dir "$d/cluster" > "$d/cluster.log" 2>&1 || { tail -n 40 "$d/cluster.log"; exit 1; }
"$py" - "$d/cluster/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["steps"] == 3 and s["duplicates"] == 0 and s["missing"] == 0, s
assert s["roles"]["rollout"] == "remote" and s["roles"]["scorer"] == "remote", s["roles"]
print(f"rlhf run over TLS: {s['steps']} steps, roles {s['roles']['rollout']} rollout x2, weights by {s['roles']['weights']}")
PY

echo "== the token is nowhere but its file"
if grep -rl --exclude=token -F "$token" "$d" ; then echo "the token leaked into the files above"; exit 1; fi
grep -q "rpc.token_file" "$d/separate/coordinator/config.yaml" || grep -q "token_file" "$d/separate/coordinator/config.yaml"

echo "== serve binds loopback by default; beyond loopback it needs TLS and a token"
if "$py" -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", 50052)); s.close()' 2>/dev/null; then
  timeout -k 5 60 "$rlhf" serve scorer --run-dir "$d/r/default" --set reward.exact_match_weight=1 $q > "$d/default.log" 2>&1 &
  default_pid=$!
  pids+=($default_pid)
  # /proc/net/tcp{,6}: a listening socket (state 0A) on port 50052 (C384): 127.0.0.1 (0100007F, or its IPv6
  # mapped form, as gRPC binds it) and nothing on every interface (0.0.0.0 or [::]).
  listening() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == "0A" && $2 ~ /:C384$/ {print $2}'; }
  for i in $(seq 1 100); do [ -n "$(listening)" ] && break; sleep 0.2; done
  echo "listening on: $(listening | tr '\n' ' ')"
  [ -n "$(listening)" ] || { cat "$d/default.log"; echo "not listening on port 50052"; exit 1; }
  if listening | grep -Ev '^(0100007F|0000000000000000FFFF00000100007F|00000000000000000000000001000000):C384$'; then
    echo "listening beyond loopback"; exit 1
  fi
  kill -TERM "$default_pid"; wait "$default_pid" || true
  echo "serve scorer with no address: 127.0.0.1:50052 only"
else
  echo "port 50052 is busy here: the default-address check is skipped"
fi
if timeout 60 "$rlhf" serve scorer --address "0.0.0.0:${ports[1]}" --set reward.exact_match_weight=1 --run-dir "$d/r/open" $q > "$d/open.log" 2>&1; then
  echo "a plaintext server on 0.0.0.0 started"; exit 1
fi
grep -q "rpc.insecure" "$d/open.log" || { cat "$d/open.log"; exit 1; }
echo "serve scorer on 0.0.0.0 without TLS: refused ($(grep -o 'without TLS and a token' "$d/open.log" | head -1))"
