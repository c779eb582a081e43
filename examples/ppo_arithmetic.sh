#!/usr/bin/env bash
# examples/ppo_arithmetic.yaml end to end, with a reward model trained on the SFT policy's own samples:
#   1-3. examples/policy_data.sh: data, tokenizer and a random model; sft (stage sft of ppo_arithmetic.yaml);
#      8 samples per training prompt from the SFT policy, labelled by the exact-match verifier, turned into
#      pairs (a right answer over a wrong one of the same prompt; held-out prompts left out), added to the
#      generated pairs of arithmetic.py
#   4. reward_model then ppo (the other stages of ppo_arithmetic.yaml), from the SFT policy
# Ends with the held-out accuracy before and after PPO and the mean KL to the SFT policy (summary.json and
# metrics.jsonl). About 8 minutes on 2 cores. Usage: examples/ppo_arithmetic.sh [WORK_DIR] (default: a
# temporary folder, removed at the end). A WORK_DIR that holds data/ and m0/ (a task of scripts/recipe_suite.sh)
# is trained as it is, with GEN_TOKENS (default 4) as the longest answer.
set -euo pipefail
source "$(dirname "$0")/recipe_lib.sh"
recipe_start "$root/examples/ppo_arithmetic.yaml" "${1:-}"
cat "$work/data/pairs.jsonl" "$work/policy_data/pairs.jsonl" > "$work/rm_pairs.jsonl"

echo "== 4. reward_model (the generated pairs and the policy's), then ppo from the SFT policy"
"$rlhf" train --config "$cfg" --model "$sft" --stages "reward_model;ppo" \
  --set reward_model.data.path="$work/rm_pairs.jsonl" --set rl.data.path="$work/data/prompts.jsonl" \
  --set rl.max_new_tokens="${GEN_TOKENS:-4}" --set eval.max_new_tokens="${GEN_TOKENS:-4}" \
  --run-dir "$work/runs/ppo" 2>&1 | grep --line-buffered -E "reward_model step [0-9]+/[0-9]+: .*eval|ppo step|eval of|held-out accuracy"

recipe_result "$work/runs/ppo" PPO
