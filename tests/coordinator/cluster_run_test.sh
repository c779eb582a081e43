#!/usr/bin/env bash
# Every role under one mpirun (`rlhf run`, roles by rank from the cluster section): 2 learner ranks (learner 0
# coordinates), 2 rollout workers and 2 scorer replicas on loopback, weights over the collective. The step loop pauses
# before chosen weight syncs (RLHF_FAULT_PAUSE_BEFORE_SYNC) so that the fault lands at an exact point:
#   before version 2  rollout worker 1 is killed (-9): the sync to it fails and it is dropped; its supervisor
#                     starts it again on the same address, and mpirun never sees a process exit
#   before version 3  the test waits until the new worker 1 answers Health (a new pid): it rejoins at version 3;
#                     scorer replica 1 is killed (-9): the scoring calls that go to it move to replica 0
#                     (its supervisor starts it again 3 s later), and no prompt is lost
#   before version 5  worker 1 reports version 4 (it took versions 3 and 4 with the group)
# The job must end with status 0, an exact ledger (no duplicates, nothing missing), 1 drop and 1 rejoin, and
# processes.json must name every process with its rank (learner 1 included). Each process serves /metrics on
# metrics.port + its local rank with `role` and `rank` labels; worker 1's shows its own generation figures. Bounded: mpirun has a timeout and
# is stopped by pid; its ranks' supervisors stop their children.
#   cluster_run_test.sh RLHF PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"
py="$2"
src="$3"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
base=$("$py" -c "
import random, socket
for _ in range(200):  # five consecutive free ports: metrics.port + local rank 0..4
    b = random.randrange(20000, 60000)
    try:
        ss = [socket.socket() for _ in range(6)]
        for i, s in enumerate(ss): s.bind(('127.0.0.1', b + i))
        print(b); break
    except OSError: pass
    finally:
        for s in ss: s.close()")
cat > "$d/cluster.yaml" <<EOF
cluster: {learners: 2, rollout_workers: 2, scorers: 2, restart_backoff_seconds: 3}
train: {stages: [grpo]}
run: {threads: 1, seed: 7}
metrics: {port: $base, bind: 127.0.0.1}
rl:
  data: {path: $d/prompts.jsonl, heldout_fraction: 0.2}
  steps: 6
  rollout_batch_size: 4
  group_size: 4
  max_new_tokens: 4
  micro_batch_size: 8
  kl_coef: 0
eval: {max_new_tokens: 4}
rollout: {capacity: 64}
roles: {max_attempts: 20, backoff_seconds: 0.1}
reward: {exact_match_weight: 1, format_weight: 1, format_pattern: '[ -~][\s\S]*'}
weights: {transport: collective, bucket_bytes: 65536, timeout_seconds: 5}
EOF
protoc --proto_path="$src/proto" --python_out="$d" rlhf/health.proto
health() {  # health ADDRESS: "pid version" of the process serving there (fails when nothing answers)
  "$py" - "$d" "$1" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import grpc
from rlhf import health_pb2
check = grpc.insecure_channel(sys.argv[2]).unary_unary(
    "/rlhf.Health/Check", request_serializer=health_pb2.HealthRequest.SerializeToString,
    response_deserializer=health_pb2.HealthReply.FromString)
r = check(health_pb2.HealthRequest(), timeout=2)
print(r.pid, r.policy_version)
PY
}

mkdir -p "$d/pause"
OMP_WAIT_POLICY=passive RLHF_FAULT_PAUSE_DIR="$d/pause" RLHF_FAULT_PAUSE_BEFORE_SYNC=2,3,5 timeout -k 10 300 \
  mpirun --allow-run-as-root --oversubscribe -x OMP_WAIT_POLICY -x RLHF_FAULT_PAUSE_DIR -x RLHF_FAULT_PAUSE_BEFORE_SYNC \
  -np 6 "$rlhf" run --config "$d/cluster.yaml" --model "$d/m" --run-dir "$d/run" > "$d/mpirun.log" 2>&1 &
job=$!
pids+=($job)

wait_for() {  # wait_for FILE: until the step loop pauses there (at most 120 s)
  wait_for_file "$1" "$job" && return 0
  echo "the run did not reach $1"; cat "$d/mpirun.log"; exit 1
}
entry() {  # entry ROLE INDEX: "address pid" of that process in processes.json
  "$py" -c "
import json, sys
w = [e for e in json.load(open(sys.argv[1]))['processes'] if e['role'] == sys.argv[2] and e['index'] == int(sys.argv[3])][0]
print(w['address'], w.get('pid', 0))" "$d/run/processes.json" "$1" "$2"
}
wait_for "$d/pause/paused-2"
read -r address killed < <(entry rollout 1)
kill -9 "$killed"
touch "$d/pause/resume-2"
wait_for "$d/pause/paused-3"
restarted=""
for _ in $(seq 1 600); do
  if r=$(health "$address" 2>/dev/null) && [ "${r%% *}" != "$killed" ]; then restarted="${r%% *}"; break; fi
  sleep 0.1
done
[ -n "$restarted" ] || { echo "rollout worker 1 was not started again at $address"; cat "$d/mpirun.log"; exit 1; }
read -r _ scorer1 < <(entry scorer 1)
kill -9 "$scorer1"
touch "$d/pause/resume-3"
wait_for "$d/pause/paused-5"
r=$(health "$address")
[ "$r" = "$restarted 4" ] || { echo "worker 1 reports '$r', expected '$restarted 4'"; cat "$d/mpirun.log"; exit 1; }
"$py" - "$base" <<'PY'
import re, sys, urllib.request
base = int(sys.argv[1])
def scrape(local_rank):
    text = urllib.request.urlopen(f"http://127.0.0.1:{base + local_rank}/metrics", timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}
w = scrape(3)  # rollout worker 1 (rank 3), since its restart
def one(ms, name):
    hits = [v for k, v in ms.items() if k.split("{")[0] == name]
    assert len(hits) == 1, (name, hits)
    k = [k for k in ms if k.split("{")[0] == name][0]
    return k, hits[0]
k, tokens = one(w, "rlhf_rollout_generated_tokens_total")
assert 'rank="3"' in k and 'role="rollout"' in k and tokens > 0, (k, tokens)
assert one(w, "rlhf_rollout_requests_total")[1] >= 1, w
assert one(w, "rlhf_rollout_request_duration_seconds_count")[1] >= 1, w
assert one(w, "rlhf_rollout_kv_cache_capacity_tokens")[1] == 16 * 64, w  # rollout.slots x rollout.capacity
assert one(w, "rlhf_rollout_queue_prompts")[1] == 0 and one(w, "rlhf_rollout_kv_cache_tokens")[1] == 0, w
assert one(w, "rlhf_policy_version")[1] == 4, w
assert one(w, "rlhf_role_restarts")[1] == 1, w  # started again once by its supervisor
l1 = scrape(1)  # learner 1
assert any('rank="1"' in k and 'role="learner"' in k for k in l1), l1
l0 = scrape(0)  # learner 0: the coordinator's weight-sync figures
phases = {k: v for k, v in l0.items() if k.startswith("rlhf_step_phase_seconds_count")}
assert len(phases) == 5 and all(v == 4 for v in phases.values()), phases  # steps 1-4 done, each phase (and the wait for the batch) once
k, synced = one(l0, "rlhf_weight_sync_bytes_total")
assert 'role="coordinator+learner"' in k and 'rank="0"' in k and synced > 0, (k, synced)
print("metrics by rank: ok")
PY
touch "$d/pause/resume-5"
if ! wait "$job"; then echo "the job failed"; cat "$d/mpirun.log"; exit 1; fi
grep -E "dropped|rejoins|starting it again" "$d/mpirun.log" || true
grep -q "rollout 1 (pid $killed) was killed by signal 9; starting it again at $address" "$d/mpirun.log"
grep -q "rollout worker 1 answers again: it rejoins the weight group at version 3" "$d/mpirun.log"
grep -q "scorer 1 (pid $scorer1) was killed by signal 9; starting it again" "$d/mpirun.log"
grep -qE "scorer replica 1: .*failing over to replica 0" "$d/mpirun.log"

"$py" - "$d/run" "$address" "$restarted" <<'PY'
import json, sys
run, address, restarted = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = json.load(open(f"{run}/summary.json"))
assert s["duplicates"] == 0 and s["missing"] == 0, s
assert s["steps"] == 6, s
r = s["roles"]
assert r["weights"] == "collective" and r["rollout_workers"] == 2 and r["learner_ranks"] == 2, r
assert r["scorers"] == 2 and s["prompts_dropped"] == 0 and s["prompts_trained"] == 24, (r, s)
assert r["restarts"].get("rollout 1") == 1 and r["restarts"].get("rollout 0") is None, r  # from the supervisors
assert r["rollout_workers_dropped"] == 1 and r["rollout_workers_rejoined"] == 1, r
procs = json.load(open(f"{run}/processes.json"))["processes"]
by = {(e["role"], e["index"]): e for e in procs}
assert set(by) == {("coordinator+learner", 0), ("learner", 1), ("rollout", 0), ("rollout", 1), ("scorer", 0),
                   ("scorer", 1)}, procs
assert [by[k]["rank"] for k in sorted(by, key=lambda k: by[k]["rank"])] == [0, 1, 2, 3, 4, 5], procs
assert by[("coordinator+learner", 0)]["rank"] == 0 and by[("learner", 1)]["rank"] == 1, procs
assert by[("rollout", 1)]["rank"] == 3 and by[("scorer", 0)]["rank"] == 4 and by[("scorer", 1)]["rank"] == 5, procs
assert by[("rollout", 1)]["pid"] == restarted and by[("rollout", 1)]["address"] == address, procs
# Scorer replica 1 is still down (its restart waits 3 s) when the stage ends and the file is written last.
assert all(e["state"] == "running" and e["pid"] > 0 for k, e in by.items() if k != ("scorer", 1)), procs
assert by[("scorer", 1)]["state"] in ("running", "unreachable"), procs
print("cluster run: ok;", r)
PY
