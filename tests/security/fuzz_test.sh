#!/usr/bin/env bash
# Fuzzes every gRPC server of the system as its own process on loopback (rlhf serve rollout, scorer and
# learner, with a bearer token and rpc.max_message_bytes of 1 MiB) with tests/python/fuzz_services.py: N
# random, mutated, truncated, wild and oversized messages per service. Every call must end with a status,
# every server must stay up with flat memory, and each must still stop cleanly on SIGTERM afterwards.
# Bounded: every process has a timeout and is killed on exit. The last line is the fuzzer's JSON figures.
#   fuzz_test.sh RLHF PYTHON3 SOURCE_DIR N
set -euo pipefail
rlhf="$1"; py="$2"; root="$3"; n="$4"
d="$(mktemp -d)"
source "$root/tests/processes.sh"
q="--set run.log_level=warn"
sum_task "$rlhf" "$py" "$d" 24 0
openssl rand -hex 32 > "$d/token"
chmod 600 "$d/token"
sec=(--set rpc.token_file="$d/token" --set rpc.max_message_bytes=1048576)
limit=$((120 + n / 10))
ports=($(free_ports "$py" 3))
timeout -k 10 "$limit" "$rlhf" serve rollout --model "$d/m" --address "127.0.0.1:${ports[0]}" --run-dir "$d/r/rollout" \
  --set rollout.capacity=64 --set run.threads=1 "${sec[@]}" $q > "$d/rollout.log" 2>&1 &
rollout_pid=$!
pids+=($rollout_pid)
timeout -k 10 "$limit" "$rlhf" serve scorer --address "127.0.0.1:${ports[1]}" --set reward.exact_match_weight=1 \
  --set reward.format_weight=1 --set 'reward.format_pattern=[ -~][\s\S]*' --run-dir "$d/r/scorer" --set run.threads=1 "${sec[@]}" $q > "$d/scorer.log" 2>&1 &
scorer_pid=$!
pids+=($scorer_pid)
timeout -k 10 "$limit" "$rlhf" serve learner --model "$d/m" --stages grpo --set rl.data.path="$d/prompts.jsonl" \
  --set rl.group_size=2 --set rl.rollout_batch_size=2 --set run.threads=1 --address "127.0.0.1:${ports[2]}" \
  --run-dir "$d/r/learner" "${sec[@]}" $q > "$d/learner.log" 2>&1 &
learner_pid=$!
pids+=($learner_pid)
protoc --proto_path="$root/proto" --python_out="$d" rlhf/health.proto rlhf/learner.proto rlhf/rollout.proto \
  rlhf/scoring.proto rlhf/sample.proto rlhf/tensor.proto
# The pid that answers is the rlhf process under `timeout`.
child() { pgrep -P "$1" | head -1; }
for i in $(seq 1 300); do
  ok=1
  for p in $rollout_pid $scorer_pid $learner_pid; do [ -n "$(child $p)" ] || ok=0; done
  [ $ok = 1 ] && break
  sleep 0.2
done
# Up and answering (Health with the token) before the clock starts.
if ! "$py" - "$d" "$d/token" "${ports[@]}" <<'PY'
import sys, time
sys.path.insert(0, sys.argv[1])
import grpc
token = open(sys.argv[2]).read().strip()
for port in sys.argv[3:]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    for _ in range(600):
        try:
            ch.unary_unary("/rlhf.Health/Check")(b"", timeout=5, metadata=[("authorization", f"Bearer {token}")])
            break
        except grpc.RpcError:
            time.sleep(0.2)
    else:
        raise SystemExit(f"port {port} never answered")
PY
then
  for f in "$d"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1
fi
FUZZ_MAX_BYTES=1048576 timeout "$limit" "$py" "$root/tests/python/fuzz_services.py" "$d" "$d/token" "$n" \
  "rollout=127.0.0.1:${ports[0]}:$(child $rollout_pid)" "scorer=127.0.0.1:${ports[1]}:$(child $scorer_pid)" \
  "learner=127.0.0.1:${ports[2]}:$(child $learner_pid)" | tee "$d/fuzz.log" || {
  echo "== the fuzzer failed; server logs:"; for f in "$d"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }
# SIGTERM: the rollout worker and the scorer stop with status 0; the learner, whose stage never finished,
# ends by the signal itself (143: it keeps no state beyond its checkpoints), never by a crash or the timeout.
for name in rollout scorer learner; do
  pid_var="${name}_pid"
  kill -TERM "$(child ${!pid_var})"
  rc=0
  wait "${!pid_var}" || rc=$?
  want=0
  [ "$name" = learner ] && want=143
  [ "$rc" = "$want" ] || { echo "$name stopped with status $rc after the fuzzing"; tail -n 20 "$d/$name.log"; exit 1; }
done
echo "every server answered every message, stayed up with flat memory and stopped cleanly"
tail -1 "$d/fuzz.log"
