#!/usr/bin/env bash
# The first steps of the recipes that learn from a policy's own answers (ppo_arithmetic.sh,
# online_dpo_judge.sh), in WORK_DIR:
#   1. data, tokenizer and a random model (arithmetic_start.sh), unless WORK_DIR already holds them (data/,
#      m0/: a task of scripts/recipe_suite.sh)
#   2. the policy's SFT: stage sft of CONFIG -> runs/sft/0-sft/model
#   3. 8 samples per prompt from the SFT policy (rlhf generate), labelled by the exact-match verifier
#      (rlhf score), turned into judge and pair data of the training prompts (verifier_data.py with
#      VERIFIER_DATA_ARGS) -> policy_data/judge.jsonl, policy_data/pairs.jsonl
# Usage: policy_data.sh RLHF_BINARY CONFIG WORK_DIR [VERIFIER_DATA_ARGS...]; GEN_TOKENS: longest answer (4)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rlhf="$1"; cfg="$2"; work="$3"
shift 3
quiet="--set run.log_level=warn"

if [ -f "$work/m0/config.json" ] && [ -f "$work/data/prompts.jsonl" ]; then
  echo "== 1. data, tokenizer and a random model: those in $work"
else
  echo "== 1. data, tokenizer and a random model in $work"
  bash "$root/examples/arithmetic_start.sh" "$rlhf" "$work"
fi

echo "== 2. the policy's sft"
"$rlhf" train --config "$cfg" --model "$work/m0" --stages sft --set sft.data.path="$work/data/sft.jsonl" \
  --run-dir "$work/runs/sft" $quiet
sft="$work/runs/sft/0-sft/model"

echo "== 3. the SFT policy's answers, labelled by the verifier"
"$rlhf" generate --model "$sft" --prompts "$work/data/prompts.jsonl" --n 8 --max-new-tokens "${GEN_TOKENS:-4}" --temperature 1 \
  --out "$work/samples.jsonl" --run-dir "$work/runs/generate" $quiet 2>/dev/null
"$rlhf" score --samples "$work/samples.jsonl" --out "$work/scored.jsonl" --set reward.exact_match_weight=1 \
  --run-dir "$work/runs/score" $quiet
/usr/bin/python3 "$root/examples/verifier_data.py" "$work/scored.jsonl" "$work/policy_data" "$@"
