#!/usr/bin/env bash
# Asynchronous RL with a hard staleness bound: rl.max_staleness=1, two rollout workers and a scorer as
# separate processes (weights over the collective, synced while the workers generate), and a learner made
# slow on purpose (RLHF_FAULT_SLOW_TRAIN) so that the next batch is always generated while it trains. From
# the per-sample versions in samples.jsonl (written as each batch goes to the learner; the line's step is
# the learner's version): no trained sample is more than one version old, generation did overlap training
# (samples one version old), and no prompt was trained twice or lost. Bounded: every process has a timeout
# and is stopped by pid.
#   async_staleness_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"
py="$2"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
ports=($(free_ports "$py" 3))
serve_rollout "$rlhf" "$d" 0 "${ports[0]}"
serve_rollout "$rlhf" "$d" 1 "${ports[1]}"
serve_scorer "$rlhf" "$d" "${ports[2]}"
if ! RLHF_FAULT_SLOW_TRAIN=0.5 timeout -k 10 300 "$rlhf" train --model "$d/m" --stages grpo --seed 7 \
  --set run.threads=1 --run-dir "$d/run" \
  --set rl.data.path="$d/prompts.jsonl" --set rl.data.heldout_fraction=0.2 --set rl.steps=6 \
  --set rl.rollout_batch_size=4 --set rl.group_size=4 --set rl.max_new_tokens=4 --set rl.micro_batch_size=8 \
  --set rl.kl_coef=0 --set rl.max_staleness=1 --set rl.tis_cap=2 --set rl.sample_log=true \
  --set eval.max_new_tokens=4 --set eval.max_prompts=8 --set rollout.capacity=64 \
  --set "roles.rollout_addresses=[127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}]" \
  --set "roles.scorer_address=127.0.0.1:${ports[2]}" --set weights.transport=collective \
  --set weights.timeout_seconds=20 > "$d/train.log" 2>&1; then
  echo "the run failed"; tail -30 "$d/train.log"; exit 1
fi
"$py" - "$d/run" <<'PY'
import collections, json, sys
run = sys.argv[1]
lines = [json.loads(l) for l in open(f"{run}/samples.jsonl")]
assert [l["step"] for l in lines] == list(range(6)), [l["step"] for l in lines]
lag = collections.Counter()
prompts = collections.Counter()
for l in lines:
    assert len(l["samples"]) == 16, len(l["samples"])
    for prompt, index, version in l["samples"]:
        assert 0 <= l["step"] - version <= 1, (l["step"], prompt, index, version)
        lag[l["step"] - version] += 1
        if index == 0:
            prompts[prompt] += 1
assert lag[1] > 0, f"no batch was generated while the learner trained: {lag}"
assert max(prompts.values()) == 1, "a prompt was trained twice"
s = json.load(open(f"{run}/summary.json"))
assert s["duplicates"] == 0 and s["missing"] == 0 and s["steps"] == 6, s
assert s["max_staleness"] == 1, s
assert {int(k): v for k, v in s["staleness"].items()} == dict(lag), (s["staleness"], lag)
m = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
grpo = [x for x in m if x.get("stage") == "grpo"]
assert grpo and all("tis_weight_mean" in x and x["staleness/max"] <= 1 for x in grpo), grpo[-1]
print("staleness bound held:", dict(lag), "prompts trained", len(prompts))
PY
