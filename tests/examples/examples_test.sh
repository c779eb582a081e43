#!/usr/bin/env bash
# Every example config runs from its own data for a few steps (mechanics, not learning: the learning figures
# come from full runs, README): grpo_arithmetic, ppo_arithmetic, grpo_process, dpo_arithmetic (and its kto,
# orpo, simpo, cpo and rrhf variants), online_dpo_judge (online DPO with a judge model, and rejection
# sampling). Each run must end with its summary.json: the online stages with a ledger that adds up and
# evaluations before and after.
# grpo_arithmetic (the main job) also runs as separate local processes on loopback (rlhf serve rollout,
# scorer and learner, and rlhf train coordinating) and must give the embedded run's figures step by step, and
# under one mpirun as examples/cluster.sh runs it (2 learner ranks, 2 rollout workers, a scorer).
#   examples_test.sh RLHF PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"; py="$2"; root="$3"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
q="--set run.log_level=warn"
"$py" "$root/examples/arithmetic.py" "$d/max" --op max
"$py" "$root/examples/multistep.py" "$d/ms" --max-operand 9 --n 300 --eval 0
cat "$d/max/corpus.txt" "$d/ms/corpus.txt" > "$d/corpus.txt"
"$rlhf" train-tokenizer --corpus "$d/corpus.txt" --merges 1 --out "$d/tok" --run-dir "$d/r/tok" $q
"$rlhf" init-model --hidden-size 32 --layers 2 --heads 4 --kv-heads 2 --intermediate-size 64 --vocab-size 300 \
  --tokenizer "$d/tok" --seed 1 --out "$d/m" --run-dir "$d/r/init" $q
few=(--model "$d/m" $q --set run.threads=1 --set sft.max_steps=2 --set rl.steps=2 --set rl.rollout_batch_size=4 --set eval.max_prompts=8
     --set eval.every=0)

run() {  # run NAME CONFIG ARGS...: one example, bounded in time
  local name="$1" cfg="$2"
  shift 2
  echo "== $name"
  timeout 300 "$rlhf" train --config "$root/examples/$cfg" "${few[@]}" "$@" --run-dir "$d/runs/$name"
}
run grpo_arithmetic grpo_arithmetic.yaml --set sft.data.path="$d/max/sft.jsonl" --set rl.data.path="$d/max/prompts.jsonl"

echo "== grpo_arithmetic as separate processes"
ports=($(free_ports "$py" 3))
timeout -k 10 300 "$rlhf" serve rollout --model "$d/m" --address "127.0.0.1:${ports[0]}" --run-dir "$d/r/rollout" \
  --set run.threads=1 $q > "$d/rollout.log" 2>&1 &
pids+=($!)
timeout -k 10 300 "$rlhf" serve scorer --address "127.0.0.1:${ports[1]}" --set reward.exact_match_weight=1 \
  --run-dir "$d/r/scorer" --set run.threads=1 $q > "$d/scorer.log" 2>&1 &
pids+=($!)
timeout -k 10 300 "$rlhf" serve learner --config "$root/examples/grpo_arithmetic.yaml" "${few[@]}" \
  --set sft.data.path="$d/max/sft.jsonl" --set rl.data.path="$d/max/prompts.jsonl" \
  --address "127.0.0.1:${ports[2]}" --run-dir "$d/separate/learner" > "$d/learner.log" 2>&1 &
learner_pid=$!
pids+=($learner_pid)
timeout 300 "$rlhf" train --config "$root/examples/grpo_arithmetic.yaml" "${few[@]}" --stages grpo \
  --set rl.data.path="$d/max/prompts.jsonl" --set "roles.rollout_addresses=[127.0.0.1:${ports[0]}]" \
  --set "roles.scorer_address=127.0.0.1:${ports[1]}" --set "roles.learner_address=127.0.0.1:${ports[2]}" \
  --set roles.max_attempts=30 --run-dir "$d/separate/coordinator"
wait "$learner_pid" || { echo "the learner failed"; cat "$d/learner.log"; exit 1; }
echo "== grpo_arithmetic under one mpirun (examples/cluster.sh, with this test's small model and data)"
mkdir -p "$d/cluster/work"
cp -r "$d/m" "$d/cluster/work/m0"
cp -r "$d/max" "$d/cluster/work/data"
BUILD_DIR="$(dirname "$(dirname "$rlhf")")" timeout -k 10 300 bash "$root/examples/cluster.sh" "$d/cluster" "${few[@]:2}" \
  | tee "$d/cluster.log"
grep -q "prompt ledger: .* 0 duplicates, 0 missing" "$d/cluster.log"
grep -q "roles: 2 learner ranks, 2 rollout workers (collective weights" "$d/cluster.log"
"$py" - "$d/runs/grpo_arithmetic" "$d/separate/coordinator" <<'PY'
import json, sys
a, b = (json.load(open(f"{r}/summary.json")) for r in sys.argv[1:3])
assert b["roles"]["rollout"] == "remote" and b["roles"]["scorer"] == "remote" and b["roles"]["learner"] != "embedded"
for k in ("steps", "prompts_trained", "prompts_filtered", "prompts_dropped", "eval_before", "eval_after"):
    assert a[k] == b[k], (k, a[k], b[k])
la = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if json.loads(l)["stage"] == "grpo"]
lb = [json.loads(l) for l in open(f"{sys.argv[2]}/metrics.jsonl")]
assert len(la) == len(lb) == a["steps"], (len(la), len(lb))
for x, y in zip(la, lb):
    for k in ("loss", "reward_mean", "entropy", "grad_norm/policy", "ledger/trained"):
        assert x[k] == y[k], (x["step"], k, x[k], y[k])
print(f"grpo_arithmetic embedded = as four processes: {a['steps']} steps, the same losses and evaluations")
PY

run ppo_arithmetic ppo_arithmetic.yaml --set sft.data.path="$d/max/sft.jsonl" --set reward_model.max_steps=2 \
  --set reward_model.data.path="$d/max/pairs.jsonl" --set rl.data.path="$d/max/prompts.jsonl"
run grpo_process grpo_process.yaml --set sft.data.path="$d/ms/sft.jsonl" --set rl.data.path="$d/ms/prompts.jsonl"
for s in dpo kto orpo simpo cpo rrhf; do
  run "$s"_arithmetic dpo_arithmetic.yaml --stages "sft;$s" --set sft.data.path="$d/max/sft.jsonl" \
    --set "$s".max_steps=2 --set "$s".data.path="$d/max/pairs.jsonl" --set eval.data.path="$d/max/prompts.jsonl"
done
run online_dpo_judge online_dpo_judge.yaml --set sft.data.path="$d/max/sft.jsonl" \
  --set rl.data.path="$d/max/prompts.jsonl" --set reward.judge_model="$d/m"
run rft_judge online_dpo_judge.yaml --stages "sft;rft" --set rl.group_size=8 --set rft.threshold=0.5 \
  --set sft.data.path="$d/max/sft.jsonl" --set rl.data.path="$d/max/prompts.jsonl" --set reward.judge_model="$d/m"

"$py" - "$d/runs" <<'PY'
import json, os, sys
runs = sys.argv[1]
online = {"grpo_arithmetic", "ppo_arithmetic", "grpo_process", "online_dpo_judge", "rft_judge"}
for name in sorted(os.listdir(runs)):
    s = json.load(open(f"{runs}/{name}/summary.json"))
    assert "eval_before" in s and "eval_after" in s, (name, sorted(s))
    if name in online:
        assert s["steps"] == 2 and s["duplicates"] == 0 and s["missing"] == 0, (name, s)
        assert s["prompts_trained"] + s["prompts_filtered"] + s["prompts_dropped"] + s["prompts_not_reached"] \
            == s["epochs"] * s["prompts_per_epoch"], (name, s)
    else:
        assert [e["after"] for e in s["pipeline_evals"]] == ["start", "0-sft", "1-" + name.split("_")[0]], (name, s)
    print(f"{name}: accuracy {s['eval_before']['accuracy']:.3f} -> {s['eval_after']['accuracy']:.3f}")
PY
