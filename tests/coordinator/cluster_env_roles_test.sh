#!/usr/bin/env bash
# `rlhf run` with the role of each process from its environment (RLHF_ROLE, RLHF_ROLE_INDEX: one pod per role
# under Kubernetes) and the store at cluster.store, no mpirun: a learner, two rollout workers and a scorer,
# started in any order, find each other through learner 0's store, run GRPO with the weights over the
# collective, and all exit when the run is over. Bounded: every process has a timeout and is stopped by pid.
#   cluster_env_roles_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
port=$(free_ports "$py" 1)
cat > "$d/run.yaml" <<EOF
cluster: {learners: 1, rollout_workers: 2, scorers: 1, store: "127.0.0.1:$port", wait_seconds: 60}
train: {stages: [grpo], model: $d/m}
run: {threads: 1, seed: 7, dir: $d/run}
rl: {data: {path: $d/prompts.jsonl, heldout_fraction: 0.2}, steps: 4, rollout_batch_size: 4, group_size: 4,
     max_new_tokens: 4, micro_batch_size: 8, kl_coef: 0}
eval: {max_new_tokens: 4}
rollout: {capacity: 64}
reward: {exact_match_weight: 1}
EOF
declare -A pid
start() {  # start ROLE INDEX
  RLHF_ROLE=$1 RLHF_ROLE_INDEX=$2 OMP_WAIT_POLICY=passive timeout -k 10 120 "$rlhf" run --config "$d/run.yaml" \
    > "$d/$1$2.log" 2>&1 &
  pids+=($!)
  pid[$1$2]=$!
}
start rollout 1  # the serving roles first: they wait for learner 0's store
start scorer 0
start learner 0
start rollout 0
for name in learner0 rollout0 rollout1 scorer0; do
  if ! wait "${pid[$name]}"; then echo "$name failed"; tail -n 20 "$d"/*.log; exit 1; fi
done
"$py" - "$d/run" <<'PY'
import json, sys
run = sys.argv[1]
s = json.load(open(f"{run}/summary.json"))
assert s["duplicates"] == 0 and s["missing"] == 0 and s["steps"] == 4, s
r = s["roles"]
assert r["rollout_workers"] == 2 and r["scorer"] == "remote" and r["weights"] == "collective", r
procs = json.load(open(f"{run}/processes.json"))["processes"]
assert sorted((e["role"], e["index"]) for e in procs) == [("coordinator+learner", 0), ("rollout", 0), ("rollout", 1), ("scorer", 0)], procs
print("roles from the environment: ok;", r)
PY
