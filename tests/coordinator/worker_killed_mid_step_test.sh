#!/usr/bin/env bash
# A rollout worker killed (-9) in the middle of a step, while it holds prompts: its Generate stream breaks, its
# prompts move to the other worker, the next weight sync drops it, and the run completes with an exact ledger
# (0 duplicates, 0 missing, nothing dropped). The worker's 2nd Generate call (the first step's, after the
# evaluation's; the learnability check is off) stalls through a fault seam (RLHF_FAULT_STALL_GENERATE) so that the kill lands at a known
# point. Bounded: every process has a timeout and is stopped by pid.
#   worker_killed_mid_step_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
ports=($(free_ports "$py" 3))
mkdir -p "$d/mark"
serve_rollout "$rlhf" "$d" 0 "${ports[0]}"
serve_rollout "$rlhf" "$d" 1 "${ports[1]}" RLHF_FAULT_STALL_GENERATE="2:$d/mark"
w1=$served
serve_scorer "$rlhf" "$d" "${ports[2]}"
timeout -k 10 300 "$rlhf" train --model "$d/m" --stages grpo --seed 7 --set run.threads=1 --run-dir "$d/run" \
  --set rl.data.path="$d/prompts.jsonl" --set rl.data.heldout_fraction=0.2 --set rl.steps=4 --set rl.precheck_prompts=0 \
  --set rl.rollout_batch_size=4 --set rl.group_size=4 --set rl.max_new_tokens=4 --set rl.micro_batch_size=8 \
  --set rl.kl_coef=0 --set eval.max_new_tokens=4 --set rollout.capacity=64 \
  --set "roles.rollout_addresses=[127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}]" \
  --set "roles.scorer_address=127.0.0.1:${ports[2]}" --set roles.max_attempts=20 --set roles.backoff_seconds=0.1 \
  --set weights.transport=collective --set weights.timeout_seconds=5 > "$d/train.log" 2>&1 &
train=$!
pids+=($train)
wait_for_file "$d/mark/generating-2" "$train" || { echo "worker 1 never stalled"; cat "$d/train.log" "$d/worker1.log"; exit 1; }
server=$(server_of "$w1") || { echo "worker 1's process not found"; exit 1; }
kill -9 "$server"
if ! wait "$train"; then echo "the run failed"; cat "$d/train.log"; exit 1; fi
grep -E "rollout worker 1|dropped" "$d/train.log" | cut -c1-200 || true
"$py" - "$d/run" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
assert s["duplicates"] == 0 and s["missing"] == 0 and s["steps"] == 4, s
assert s["prompts_dropped"] == 0 and s["prompts_trained"] == 16, s
assert s["prompts_released"] > 0, s  # worker 1's lease was handed to worker 0
assert s["roles"]["rollout_workers_dropped"] == 1, s["roles"]
print("worker killed mid-step: ok;", {k: s[k] for k in ("prompts_trained", "prompts_released", "duplicates", "missing")})
PY
