#!/usr/bin/env bash
# PPO (with a critic) and online DPO, each run embedded in one process and as four processes on loopback
# (`rlhf serve rollout`, `rlhf serve scorer`, `rlhf serve learner` and `rlhf train` coordinating): the step
# loop is one code path whatever process a role is in, so metrics.jsonl (every figure but timings) and
# summary.json (but timings and the roles) must be identical, step by step.
#   stages_processes_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
q="--set run.log_level=warn"

sum_task "$rlhf" "$py" "$d" 20 0

reward=(--set reward.exact_match_weight=1 --set reward.format_weight=1 --set 'reward.format_pattern=[ -~][\s\S]*')
common=(--model "$d/m" --seed 11 $q --set run.threads=1 --set rl.data.path="$d/prompts.jsonl"
        --set rl.data.heldout_fraction=0.2 --set rl.rollout_batch_size=4 --set rl.max_new_tokens=4
        --set rl.micro_batch_size=8 --set rl.optim.lr=1e-3 --set rl.optim.eps=1e-3 --set eval.max_new_tokens=4
        --set train.save_every=2 --set rollout.capacity=64 "${reward[@]}")
ppo=(--stages ppo --set rl.group_size=1 --set rl.steps=5 --set rl.ppo_epochs=2 --set rl.minibatch_size=2
     --set rl.kl_coef=0.1 --set rl.critic_optim.lr=1e-3 --set rl.critic_optim.eps=1e-3)
odpo=(--stages online_dpo --set rl.group_size=4 --set rl.steps=4 --set online_dpo.beta=0.1)

run_both() {  # run_both NAME ARGS...: embedded, then as four processes
  local name="$1"
  shift
  echo "== $name embedded"
  timeout 300 "$rlhf" train "$@" --run-dir "$d/$name-embedded"
  echo "== $name as processes"
  local ports
  ports=($(free_ports "$py" 3))
  timeout -k 10 300 "$rlhf" serve rollout --model "$d/m" --address "127.0.0.1:${ports[0]}" --run-dir "$d/r/$name-rollout" \
    --set rollout.capacity=64 --set run.threads=1 $q > "$d/$name-rollout.log" 2>&1 &
  pids+=($!)
  timeout -k 10 300 "$rlhf" serve scorer --address "127.0.0.1:${ports[1]}" --run-dir "$d/r/$name-scorer" "${reward[@]}" $q \
    > "$d/$name-scorer.log" 2>&1 &
  pids+=($!)
  timeout -k 10 300 "$rlhf" serve learner "$@" --address "127.0.0.1:${ports[2]}" --run-dir "$d/$name-learner" \
    > "$d/$name-learner.log" 2>&1 &
  local learner=$!
  pids+=($learner)
  timeout 300 "$rlhf" train "$@" --set "roles.rollout_addresses=[127.0.0.1:${ports[0]}]" \
    --set "roles.scorer_address=127.0.0.1:${ports[1]}" --set "roles.learner_address=127.0.0.1:${ports[2]}" \
    --set roles.max_attempts=30 --set roles.backoff_seconds=0.1 --run-dir "$d/$name-processes"
  wait "$learner" || { echo "the $name learner failed"; cat "$d/$name-learner.log"; exit 1; }
}
run_both ppo "${common[@]}" "${ppo[@]}"
run_both online_dpo "${common[@]}" "${odpo[@]}"

"$py" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
TIMING = ("seconds", "per_second")
def lines(run):
    return [{k: v for k, v in json.loads(l).items() if not any(t in k for t in TIMING)} for l in open(f"{d}/{run}/metrics.jsonl")]
def summary(run):
    s = json.load(open(f"{d}/{run}/summary.json"))
    for st in s.get("stages", []):
        st.pop("wall_seconds", None)
    return {k: v for k, v in s.items() if k not in ("wall_seconds", "throughput", "roles")}
for name, steps in (("ppo", 5), ("online_dpo", 4)):
    a, b = lines(f"{name}-embedded"), lines(f"{name}-processes")
    assert len(a) == len(b) == steps, (name, len(a), len(b))
    for x, y in zip(a, b):
        assert x == y, (name, x["step"], {k: (x.get(k), y.get(k)) for k in set(x) | set(y) if x.get(k) != y.get(k)})
    sa, sb = summary(f"{name}-embedded"), summary(f"{name}-processes")
    assert sa == sb, (name, {k: (sa.get(k), sb.get(k)) for k in set(sa) | set(sb) if sa.get(k) != sb.get(k)})
    assert sa["duplicates"] == 0 and sa["missing"] == 0, sa
    print(f"{name}: {steps} steps identical embedded and as four processes ({len(a[0])} figures a step; "
          f"accuracy {sa['eval_before']['accuracy']:.3f} -> {sa['eval_after']['accuracy']:.3f})")
PY
