#!/usr/bin/env bash
# The learner comes back by itself: under one mpirun (`rlhf run`, 2 learner ranks, 1 rollout worker, the
# scorer embedded), learner rank 1's process is killed (-9) after the checkpoint of step 2. The learner
# group goes down (rank 0's next collective names the lost rank), every learner's supervisor starts its
# child again from the newest verified checkpoint in a new learner group, the rollout worker keeps its
# process and takes the restored weights, and the run completes with an exact ledger. With
# rl.max_staleness 0 the final weights equal those of the same run uninterrupted. The step loop pauses
# before the sync of version 3 (RLHF_FAULT_PAUSE_*) so that the kill lands at a known point. Bounded: every
# process has a timeout and is stopped by pid.
#   learner_restart_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$(realpath "$1")"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
cat > "$d/cluster.yaml" <<EOF
cluster: {learners: 2, rollout_workers: 1, scorers: 0, restart_backoff_seconds: 0.5}
train: {stages: [grpo], save_every: 2}
run: {threads: 1, seed: 7}
rl:
  data: {path: $d/prompts.jsonl, heldout_fraction: 0.2}
  steps: 5
  rollout_batch_size: 4
  group_size: 4
  max_new_tokens: 4
  micro_batch_size: 8
  kl_coef: 0
eval: {max_new_tokens: 4, max_prompts: 4}
rollout: {capacity: 64}
roles: {max_attempts: 20, backoff_seconds: 0.1}
reward: {exact_match_weight: 1, format_weight: 1, format_pattern: '[ -~][\s\S]*'}
weights: {transport: collective, timeout_seconds: 5}
dist: {timeout_seconds: 20}
EOF
mpi=(mpirun --allow-run-as-root --oversubscribe -x OMP_WAIT_POLICY)
export OMP_WAIT_POLICY=passive

echo "== uninterrupted"
timeout -k 10 300 "${mpi[@]}" -np 3 "$rlhf" run --config "$d/cluster.yaml" --model "$d/m" --run-dir "$d/plain" \
  > "$d/plain.log" 2>&1 || { echo "the uninterrupted run failed"; tail -30 "$d/plain.log"; exit 1; }

echo "== learner rank 1 killed after the checkpoint of step 2"
mkdir -p "$d/pause"
RLHF_FAULT_PAUSE_DIR="$d/pause" RLHF_FAULT_PAUSE_BEFORE_SYNC=3 timeout -k 10 300 \
  "${mpi[@]}" -x RLHF_FAULT_PAUSE_DIR -x RLHF_FAULT_PAUSE_BEFORE_SYNC \
  -np 3 "$rlhf" run --config "$d/cluster.yaml" --model "$d/m" --run-dir "$d/run" > "$d/mpirun.log" 2>&1 &
job=$!
pids+=($job)
wait_for_file "$d/pause/paused-3" "$job" || { echo "the run did not pause before version 3"; cat "$d/mpirun.log"; exit 1; }
read -r learner1 worker0 < <("$py" -c "
import json, sys
p = json.load(open(sys.argv[1]))['processes']
pid = lambda role, i: [e for e in p if e['role'] == role and e['index'] == i][0]['pid']
print(pid('learner', 1), pid('rollout', 0))" "$d/run/processes.json")
kill -9 "$learner1"
touch "$d/pause/resume-3"
if ! wait "$job"; then echo "the job failed"; tail -40 "$d/mpirun.log"; exit 1; fi
grep -E "starting it again from the newest checkpoint" "$d/mpirun.log" | cut -c1-220 || true
grep -q "learner 1 (pid $learner1) was killed by signal 9; starting it again from the newest checkpoint" "$d/mpirun.log"
"$py" - "$d" "$worker0" <<'PY'
import json, struct, sys
d, worker0 = sys.argv[1], int(sys.argv[2])
s = json.load(open(f"{d}/run/summary.json"))
assert s["steps"] == 5 and s["duplicates"] == 0 and s["missing"] == 0, s
assert s["prompts_trained"] == 20, s
assert s["roles"]["restarts"].get("learner 1") == 1 and s["roles"]["restarts"].get("learner 0") == 1, s["roles"]
p = json.load(open(f"{d}/run/processes.json"))["processes"]
w = [e for e in p if e["role"] == "rollout"][0]
assert w["pid"] == worker0 and w["policy_version"] == 5, w  # the same worker process, at the final version
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
a = tensors(f"{d}/plain/0-grpo/model/model.safetensors")
b = tensors(f"{d}/run/0-grpo/model/model.safetensors")
assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)]
m = [json.loads(l) for l in open(f"{d}/run/metrics.jsonl")]
steps = [x["step"] for x in m if x.get("stage") == "grpo"]
assert steps == [1, 2, 3, 4, 5], steps  # the steps after the checkpoint were dropped from the log and done again
print("learner restart: ok; final weights equal the uninterrupted run's;", s["roles"]["restarts"])
PY
