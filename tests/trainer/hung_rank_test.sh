#!/usr/bin/env bash
# A learner rank that hangs (SIGSTOP) under `mpirun -np 2 rlhf train`: rank 0's next collective ends at
# dist.timeout_seconds, its one-line error names rank 1 (pid, host: no heartbeat), and the whole job exits
# (no process waits forever in a collective or in MPI_Finalize). Bounded: the job has a timeout; the stopped
# rank is continued and killed by pid.
#   hung_rank_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
OMP_WAIT_POLICY=passive timeout -k 10 120 mpirun --allow-run-as-root --oversubscribe -x OMP_WAIT_POLICY -np 2 \
  "$rlhf" train --model "$d/m" --stages grpo --seed 7 --set run.threads=1 --set rl.data.path="$d/prompts.jsonl" \
  --set rl.steps=100000 --set rl.epochs=10000 --set rl.rollout_batch_size=4 --set rl.group_size=4 \
  --set rl.max_new_tokens=4 --set rl.micro_batch_size=8 --set rl.kl_coef=0 --set eval.max_new_tokens=4 \
  --set reward.exact_match_weight=1 --set dist.timeout_seconds=5 --run-dir "$d/run" > "$d/mpirun.log" 2>&1 &
job=$!
pids+=($job)
rank1=""
for _ in $(seq 1 600); do  # this job's rank-1 rlhf process (its run dir is in its command line), once it steps
  if grep -q "grpo step 2" "$d/run/log.txt" 2>/dev/null; then
    for e in /proc/[0-9]*/environ; do
      p=${e#/proc/}; p=${p%/environ}
      if { tr '\0' '\n' < "$e"; } 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && grep -qF "$d/run" "/proc/$p/cmdline" 2>/dev/null; then
        rank1=$p
      fi
    done
    break
  fi
  sleep 0.1
done
[ -n "$rank1" ] || { echo "no rank 1 found"; cat "$d/mpirun.log"; exit 1; }
pids+=($rank1)
kill -STOP "$rank1"
start=$(date +%s)
status=0
wait "$job" || status=$?
took=$(( $(date +%s) - start ))
kill -CONT "$rank1" 2>/dev/null || true
kill -9 "$rank1" 2>/dev/null || true
grep "error:" "$d/mpirun.log" || true
echo "job status $status after ${took} s"
[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 137 ] || { echo "the job did not exit by itself"; cat "$d/mpirun.log"; exit 1; }
grep -qE "^rlhf train: error: .*timed out.*; rank 1 \(pid $rank1 on [^)]*\) has sent no heartbeat for 2 s: stopped, dead or cut off$" "$d/mpirun.log" \
  || { echo "rank 1 was not named in one line"; cat "$d/mpirun.log"; exit 1; }
[ "$took" -lt 60 ] || { echo "the job took ${took} s to exit"; exit 1; }
echo "hung rank: named, and the job exited"
