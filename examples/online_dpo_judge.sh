#!/usr/bin/env bash
# examples/online_dpo_judge.yaml end to end: online DPO of the policy against a judge that was itself
# SFT-trained to answer Yes / No on the task.
#   1-3. examples/policy_data.sh: data, tokenizer and a random model; the policy's SFT (stage sft of
#      online_dpo_judge.yaml); the judge's data: 8 samples per training prompt from the SFT policy, labelled by
#      the exact-match verifier, as judge prompts with " Yes" / " No", plus rows that complete each training
#      prompt with its answer and " Yes" (verifier_data.py --answers)
#   4. the judge: SFT from the SFT policy, 4000 steps at lr 0.002, then 6000 more at lr 0.001
#   5. online DPO of the SFT policy, rewarded by the judge only (P(Yes) / (P(Yes) + P(No))); held-out
#      accuracy is exact match, computed beside it
# About 22 minutes on 2 cores. Usage: examples/online_dpo_judge.sh [WORK_DIR] (default: a temporary folder).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh"
rlhf="${BUILD_DIR:-$root/build}/cli/rlhf"
if [ -n "${1:-}" ]; then work="$1"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
quiet="--set run.log_level=warn"
cfg="$root/examples/online_dpo_judge.yaml"

bash "$root/examples/policy_data.sh" "$rlhf" "$cfg" "$work" --answers "$work/data/sft.jsonl"
sft="$work/runs/sft/0-sft/model"

echo "== 4. the judge: sft from the SFT policy (4000 + 6000 steps)"
judge_sft=(--stages sft --set sft.data.path="$work/policy_data/judge.jsonl" --set sft.epochs=10 --set sft.max_length=32
           --set sft.batch_size=32 --set sft.micro_batch_size=32 --set sft.optim.warmup_steps=20 --set train.log_every=1000)
"$rlhf" train --model "$sft" "${judge_sft[@]}" --set sft.max_steps=4000 --set sft.optim.lr=0.002 \
  --run-dir "$work/runs/judge1" $quiet
"$rlhf" train --model "$work/runs/judge1/0-sft/model" "${judge_sft[@]}" --set sft.max_steps=6000 \
  --set sft.optim.lr=0.001 --run-dir "$work/runs/judge2" $quiet

echo "== 5. online DPO against the judge"
"$rlhf" train --config "$cfg" --model "$sft" --stages online_dpo --set rl.data.path="$work/data/prompts.jsonl" \
  --set reward.judge_model="$work/runs/judge2/0-sft/model" --run-dir "$work/runs/online_dpo" 2>&1 |
  grep --line-buffered -E "online_dpo step|eval of|held-out accuracy"
