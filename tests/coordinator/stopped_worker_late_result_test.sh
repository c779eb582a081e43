#!/usr/bin/env bash
# A rollout worker stopped (SIGSTOP) inside a lease for longer than the lease's deadline, then let go
# (SIGCONT): its lease goes to the other worker when the deadline passes, the weight sync drops the stopped
# worker, and the result it sends once it runs again is refused and counted (summary.json events
# late_refused), never trained: the run completes with 0 duplicates and 0 missing. The worker's 2nd Generate
# call (its first of the first step: the evaluation before it takes one lease per worker; the learnability
# check is off) marks a file and
# waits 3 s (RLHF_FAULT_STALL_GENERATE), so that the stop lands inside a lease.
# Bounded: every process has a timeout and is stopped by pid.
#   stopped_worker_late_result_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
ports=($(free_ports "$py" 3))
mkdir -p "$d/mark"
serve_rollout "$rlhf" "$d" 0 "${ports[0]}"
serve_rollout "$rlhf" "$d" 1 "${ports[1]}" RLHF_FAULT_STALL_GENERATE="2:$d/mark:3"
w1=$served
serve_scorer "$rlhf" "$d" "${ports[2]}"
timeout -k 10 300 "$rlhf" train --model "$d/m" --stages grpo --seed 7 --set run.threads=1 --run-dir "$d/run" \
  --set rl.data.path="$d/prompts.jsonl" --set rl.data.heldout_fraction=0.2 --set rl.steps=5 --set rl.precheck_prompts=0 \
  --set rl.rollout_batch_size=4 --set rl.group_size=4 --set rl.max_new_tokens=4 --set rl.micro_batch_size=8 \
  --set rl.kl_coef=0 --set eval.max_new_tokens=4 --set eval.max_prompts=2 --set rollout.capacity=64 \
  --set "roles.rollout_addresses=[127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}]" \
  --set "roles.scorer_address=127.0.0.1:${ports[2]}" --set roles.lease_seconds=1.5 \
  --set weights.transport=collective --set weights.timeout_seconds=3 > "$d/train.log" 2>&1 &
train=$!
pids+=($train)
wait_for_file "$d/mark/generating-2" "$train" || { echo "worker 1 never reached its 2nd call"; cat "$d/train.log" "$d/worker1.log"; exit 1; }
server=$(server_of "$w1") || { echo "worker 1's process not found"; exit 1; }
kill -STOP "$server"
sleep 8
kill -CONT "$server"
if ! wait "$train"; then echo "the run failed"; tail -30 "$d/train.log"; exit 1; fi
grep -E "missed the deadline|refused|dropped" "$d/train.log" | cut -c1-200 || true
"$py" - "$d/run" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
assert s["duplicates"] == 0 and s["missing"] == 0 and s["steps"] == 5, s
assert s["prompts_trained"] == 20 and s["prompts_dropped"] == 0, s
assert s["prompts_released"] >= 1, s  # the expired lease's prompts were leased again (a training batch's)
ev = s["events"]
assert ev.get("lease_expired", 0) >= 1, ev
assert ev.get("late_refused", 0) >= 1, ev
print("stopped worker: ok;", ev, {k: s[k] for k in ("prompts_trained", "prompts_released", "duplicates", "missing")})
PY
