#!/usr/bin/env bash
# Membership of the weight group with real processes on loopback: two `rlhf serve rollout` workers, a scorer,
# and `rlhf train` (coordinator and learner) sending the weights over the collective. The step loop pauses
# before chosen weight syncs (RLHF_FAULT_PAUSE_BEFORE_SYNC) so that the faults land at exact points:
#   before version 2  worker 1 is killed (-9): the sync fails, worker 1 is dropped, the run goes on with 0
#   before version 4  worker 1 is started again on its port: it rejoins and takes version 4 with worker 0
#   before version 6  worker 0 is stopped (SIGSTOP): the sync ends at weights.timeout_seconds, worker 0 is
#                     dropped, and the run ends with worker 1 alone
# The run must finish with an exact ledger (no duplicates, nothing missing), report 2 drops and 1 rejoin,
# and worker 1 must hold the final policy version. Bounded: every process has a timeout and is stopped by pid.
#   membership_test.sh RLHF PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"
py="$2"
src="$3"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
q="--set run.log_level=warn"
sum_task "$rlhf" "$py" "$d" 40 0
ports=($(free_ports "$py" 3))
wpid=()
start_worker() {  # start_worker INDEX NAME
  timeout -k 10 300 "$rlhf" serve rollout --model "$d/m" --address "127.0.0.1:${ports[$1]}" --run-dir "$d/r/$2" \
    --set rollout.capacity=64 --set run.threads=1 --set run.log_level=info > "$d/$2.log" 2>&1 &
  wpid[$1]=$!
  pids+=($!)
}
start_worker 0 worker0
start_worker 1 worker1
timeout -k 10 300 "$rlhf" serve scorer --address "127.0.0.1:${ports[2]}" --run-dir "$d/r/scorer" \
  --set reward.exact_match_weight=1 --set reward.format_weight=1 --set 'reward.format_pattern=[ -~][\s\S]*' $q \
  > "$d/scorer.log" 2>&1 &
pids+=($!)

mkdir -p "$d/pause"
RLHF_FAULT_PAUSE_DIR="$d/pause" RLHF_FAULT_PAUSE_BEFORE_SYNC=2,4,6 timeout -k 10 300 "$rlhf" train --model "$d/m" \
  --stages grpo --seed 7 --set run.threads=1 --set run.log_level=info --run-dir "$d/run" \
  --set rl.data.path="$d/prompts.jsonl" --set rl.data.heldout_fraction=0.2 --set rl.steps=8 \
  --set rl.rollout_batch_size=4 --set rl.group_size=4 --set rl.max_new_tokens=4 --set rl.micro_batch_size=8 \
  --set rl.kl_coef=0 --set eval.max_new_tokens=4 --set rollout.capacity=64 \
  --set "roles.rollout_addresses=[127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}]" \
  --set "roles.scorer_address=127.0.0.1:${ports[2]}" --set roles.max_attempts=20 --set roles.backoff_seconds=0.1 \
  --set weights.transport=collective --set weights.timeout_seconds=5 --set weights.bucket_bytes=65536 \
  > "$d/train.log" 2>&1 &
train=$!
pids+=($train)

wait_for() {  # wait_for FILE: until the step loop pauses there (at most 120 s)
  wait_for_file "$1" "$train" && return 0
  echo "the run did not reach $1"; cat "$d/train.log"; exit 1
}
wait_for "$d/pause/paused-2"
kill -9 "$(server_of "${wpid[1]}")"
touch "$d/pause/resume-2"
wait_for "$d/pause/paused-4"
start_worker 1 worker1-again
for _ in $(seq 1 600); do grep -q "rollout worker serving" "$d/worker1-again.log" && break; sleep 0.1; done
grep -q "rollout worker serving" "$d/worker1-again.log" || { echo "worker 1 did not start again"; cat "$d/worker1-again.log"; exit 1; }
worker1_pid=$(server_of "${wpid[1]}")
touch "$d/pause/resume-4"
wait_for "$d/pause/paused-6"
stopped=$(server_of "${wpid[0]}")
kill -STOP "$stopped"
touch "$d/pause/resume-6"
if ! wait "$train"; then echo "the run failed"; cat "$d/train.log"; exit 1; fi
kill -CONT "$stopped" 2>/dev/null || true
cat "$d/train.log" | grep -E "dropped|rejoins|group generation|weight sync" || true

grep -q "rollout worker 1 dropped" "$d/train.log"
grep -q "rollout worker 1 answers again: it rejoins the weight group at version 4" "$d/train.log"
grep -q "rollout worker 0 dropped" "$d/train.log"
protoc --proto_path="$src/proto" --python_out="$d" rlhf/health.proto
"$py" - "$d/run" "${ports[1]}" "$d" "$worker1_pid" "$train" <<'PY'
import json, sys
run, port, gen, worker1_pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = json.load(open(f"{run}/summary.json"))
assert s["duplicates"] == 0 and s["missing"] == 0, s
assert s["steps"] == 8, s
r = s["roles"]
assert r["weights"] == "collective" and r["rollout_workers"] == 2, r
assert r["rollout_workers_dropped"] == 2 and r["rollout_workers_rejoined"] == 1, r
# The rejoined worker holds the final policy (Health, asked by an independent client).
sys.path.insert(0, gen)
import grpc
from rlhf import health_pb2
check = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary(
    "/rlhf.Health/Check", request_serializer=health_pb2.HealthRequest.SerializeToString,
    response_deserializer=health_pb2.HealthReply.FromString)
reply = check(health_pb2.HealthRequest(), timeout=30)
assert reply.policy_version == 8, reply
# processes.json: every process of the run, kept current as workers leave and come back.
procs = json.load(open(f"{run}/processes.json"))["processes"]
assert procs[0]["role"] == "coordinator+learner" and procs[0]["pid"] > 0 and procs[0]["host"], procs[0]
workers = {e["index"]: e for e in procs if e["role"] == "rollout"}
assert workers[0]["state"] == "dropped", workers
assert workers[1]["state"] == "running" and workers[1]["pid"] == worker1_pid, workers
assert workers[1]["address"] == f"127.0.0.1:{port}", workers
assert [e["state"] for e in procs if e["role"] == "scorer"] == ["running"], procs
print("membership: ok;", r)
PY
