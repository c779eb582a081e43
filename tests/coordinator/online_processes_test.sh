#!/usr/bin/env bash
# Online GRPO as separate local processes on loopback (`rlhf serve rollout`, `rlhf serve scorer`, and
# `rlhf train` as coordinator and learner; then also `rlhf serve learner` with `rlhf train` only
# coordinating) against the same run embedded in one process, and embedded with two data-parallel learner
# ranks under mpirun, and with those two ranks as a learner process (mpirun rlhf serve learner). The
# separate runs are killed right after a checkpoint (the whole run; its learner; its coordinator) and resumed. All must end with the same ledger (every prompt of every epoch trained, filtered or dropped
# once; no duplicates, nothing missing), the same losses step by step and the same held-out evaluation.
# Bounded: every process has a timeout and is killed on exit.
#   online_processes_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
q="--set run.log_level=warn"

# A task: 24 prompts "a+b=" with answers; 3 of them are too long for the rollout workers' context (64
# tokens): the workers refuse those, and the ledger records them as dropped.
sum_task "$rlhf" "$py" "$d" 24 1

# Rewards: exact match, plus 1 for a completion that starts with printable ASCII (so that the groups of a
# random model differ; the rest are filtered by dynamic sampling).
reward=(--set reward.exact_match_weight=1 --set reward.format_weight=1 --set 'reward.format_pattern=[ -~][\s\S]*')
args=(--model "$d/m" --stages grpo --seed 7 $q --set run.threads=1
      --set rl.data.path="$d/prompts.jsonl" --set rl.data.heldout_fraction=0.2 --set rl.epochs=2
      --set rl.rollout_batch_size=4 --set rl.group_size=4 --set rl.max_new_tokens=4 --set rl.micro_batch_size=8
      --set rl.dynamic_sampling=true --set rl.kl_coef=0 --set rl.optim.lr=1e-3 --set rl.optim.eps=1e-3
      --set eval.max_new_tokens=4 --set train.save_every=2 --set rollout.capacity=64 "${reward[@]}")

echo "== embedded"
timeout 300 "$rlhf" train "${args[@]}" --run-dir "$d/embedded"

echo "== embedded, two learner ranks (mpirun)"
timeout 300 mpirun --allow-run-as-root --oversubscribe -np 2 "$rlhf" train "${args[@]}" --set dist.master_addr=127.0.0.1 \
  --set train.save_every=3 \
  --run-dir "$d/ranks2"

echo "== separate processes: rollout worker and scorer on loopback"
ports=($(free_ports "$py" 4))
timeout -k 10 300 "$rlhf" serve rollout --model "$d/m" --address "127.0.0.1:${ports[0]}" --run-dir "$d/r/rollout" \
  --set rollout.capacity=64 --set run.threads=1 $q > "$d/rollout.log" 2>&1 &
pids+=($!)
timeout -k 10 300 "$rlhf" serve scorer --address "127.0.0.1:${ports[1]}" --run-dir "$d/r/scorer" "${reward[@]}" $q \
  > "$d/scorer.log" 2>&1 &
pids+=($!)
remote=(--set "roles.rollout_addresses=[127.0.0.1:${ports[0]}]" --set "roles.scorer_address=127.0.0.1:${ports[1]}"
        --set roles.max_attempts=20 --set roles.backoff_seconds=0.1)
# The servers may still be starting: the coordinator's retries wait for them.
if RLHF_FAULT_KILL_AFTER_CHECKPOINT=2 timeout 300 "$rlhf" train "${args[@]}" "${remote[@]}" --run-dir "$d/separate"; then
  echo "the fault injection did not stop the run"; exit 1
fi
test ! -f "$d/separate/summary.json"
echo "== resumed"
timeout 300 "$rlhf" train "${args[@]}" "${remote[@]}" --resume --run-dir "$d/separate"

echo "== the learner as a process too (rlhf serve learner), killed after its checkpoint of step 2 and resumed"
learn=(--set "roles.learner_address=127.0.0.1:${ports[2]}")
RLHF_FAULT_KILL_AFTER_CHECKPOINT=2 timeout -k 10 300 "$rlhf" serve learner "${args[@]}" --address "127.0.0.1:${ports[2]}" \
  --run-dir "$d/learner" > "$d/learner.log" 2>&1 &
pids+=($!)
if timeout 300 "$rlhf" train "${args[@]}" "${remote[@]}" "${learn[@]}" --run-dir "$d/coordinator"; then
  echo "the coordinator went on without its learner"; exit 1
fi
timeout -k 10 300 "$rlhf" serve learner "${args[@]}" --address "127.0.0.1:${ports[2]}" --resume --run-dir "$d/learner" \
  >> "$d/learner.log" 2>&1 &
learner_pid=$!
pids+=($learner_pid)
timeout 300 "$rlhf" train "${args[@]}" "${remote[@]}" "${learn[@]}" --run-dir "$d/coordinator"
# Finish ends the learner's stage: it saves the policy and stops by itself.
wait "$learner_pid" || { echo "the learner failed"; cat "$d/learner.log"; exit 1; }
test -f "$d/learner/0-grpo/model/model.safetensors"

echo "== a learner process of two ranks (mpirun rlhf serve learner), the rollout worker and scorer embedded"
timeout -k 10 300 mpirun --allow-run-as-root --oversubscribe -np 2 "$rlhf" serve learner "${args[@]}" \
  --set dist.master_addr=127.0.0.1 --set train.save_every=3 --address "127.0.0.1:${ports[3]}" \
  --run-dir "$d/learner2" > "$d/learner2.log" 2>&1 &
learner_pid=$!
pids+=($learner_pid)
# This time the coordinator dies (after the learner's checkpoint of step 3); the learner lives on, and a new
# coordinator continues from it.
coordinate2=(train "${args[@]}" --set train.save_every=3 --set "roles.learner_address=127.0.0.1:${ports[3]}"
             --set roles.max_attempts=30 --run-dir "$d/coordinator2")
if RLHF_FAULT_KILL_AFTER_CHECKPOINT=3 timeout 300 "$rlhf" "${coordinate2[@]}"; then
  echo "the fault injection did not stop the coordinator"; exit 1
fi
timeout 300 "$rlhf" "${coordinate2[@]}"
wait "$learner_pid" || { echo "the two-rank learner failed"; cat "$d/learner2.log"; exit 1; }

"$py" - "$d/embedded" "$d/separate" "$d/ranks2" "$d/coordinator" "$d/coordinator2" <<'PY'
import json, sys
a, b, f = (json.load(open(f"{r}/summary.json")) for r in (sys.argv[1], sys.argv[2], sys.argv[4]))
for s in (a, b, f):
    assert s["duplicates"] == 0 and s["missing"] == 0, s
    assert s["prompts_trained"] + s["prompts_filtered"] + s["prompts_dropped"] == s["epochs"] * s["prompts_per_epoch"], s
    assert s["prompts_dropped"] > 0 and s["prompts_trained"] > 0, s
    assert s["reasons"].get("rollout INVALID_ARGUMENT") == s["prompts_dropped"], s
    for e in (s["eval_before"], s["eval_after"]):
        assert e["prompts"] > 0 and 0 <= e["accuracy_ci95"][0] <= e["accuracy"] <= e["accuracy_ci95"][1] <= 1, e
assert a["roles"]["rollout"] == "embedded" and b["roles"]["rollout"] == "remote" and b["roles"]["scorer"] == "remote"
# Remote workers take the weights over the collective (weights.transport auto), the embedded one by gRPC.
assert a["roles"]["weights"] == "grpc" and b["roles"]["weights"] == "collective" == f["roles"]["weights"], (a["roles"], b["roles"], f["roles"])
assert f["roles"]["learner"].startswith("127.0.0.1:") and f["roles"]["learner_ranks"] == 1, f["roles"]
for k in ("steps", "prompts_trained", "prompts_filtered", "prompts_dropped", "eval_before", "eval_after"):
    assert a[k] == b[k] == f[k], (k, a[k], b[k], f[k])
la, lb, le = ([json.loads(l) for l in open(f"{r}/metrics.jsonl")] for r in (sys.argv[1], sys.argv[2], sys.argv[4]))
assert len(la) == len(lb) == len(le) == a["steps"], (len(la), len(lb), len(le), a["steps"])
for x, y, z in zip(la, lb, le):
    for k in ("loss", "reward_mean", "entropy", "ledger/trained", "ledger/filtered", "ledger/dropped"):
        assert x[k] == y[k] == z[k], (x["step"], k, x[k], y[k], z[k])
# Two learner ranks: the same ledger and evaluation, the same update up to summation order.
c = json.load(open(sys.argv[3] + "/summary.json"))
assert c["roles"]["learner_ranks"] == 2, c
for k in ("steps", "prompts_trained", "prompts_filtered", "prompts_dropped", "eval_before"):
    assert a[k] == c[k], (k, a[k], c[k])
lc = [json.loads(l) for l in open(f"{sys.argv[3]}/metrics.jsonl")]
for x, y in zip(la, lc):
    for k in ("reward_mean", "grad_norm/policy", "entropy"):
        assert abs(x[k] - y[k]) <= 1e-4 * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
# The same two ranks as a learner process: the same run as the embedded two ranks, step by step.
g = json.load(open(sys.argv[5] + "/summary.json"))
assert g["roles"]["learner_ranks"] == 2, g["roles"]
for k in ("steps", "prompts_trained", "prompts_filtered", "prompts_dropped", "eval_before", "eval_after"):
    assert c[k] == g[k], (k, c[k], g[k])
lg = [json.loads(l) for l in open(f"{sys.argv[5]}/metrics.jsonl")]
assert len(lg) == len(lc), (len(lg), len(lc))
for x, y in zip(lc, lg):
    for k in ("loss", "grad_norm/policy", "entropy", "ledger/trained"):
        assert x[k] == y[k], (x["step"], k, x[k], y[k])
print(f"same run embedded, as processes (killed after step 2, resumed) and with the learner as a process "
      f"(killed after step 2, resumed): {a['steps']} steps, "
      f"{a['prompts_trained']} trained, {a['prompts_filtered']} filtered, {a['prompts_dropped']} dropped of "
      f"{a['epochs']} x {a['prompts_per_epoch']} prompts; accuracy {a['eval_before']['accuracy']:.3f} -> "
      f"{a['eval_after']['accuracy']:.3f}")
PY
