#!/usr/bin/env bash
# examples/dpo_arithmetic.yaml end to end on the policy's own answers (the DPO recipe of scripts/recipe_suite.sh):
#   1-3. examples/policy_data.sh: data, tokenizer and a random model; sft (stage sft of dpo_arithmetic.yaml, until
#      held-out accuracy 30% or a plateau); 8 samples per training prompt from the SFT policy, labelled by the
#      exact-match verifier, turned into pairs: each right answer of a prompt over up to 2 wrong ones of the same
#      prompt (held-out prompts left out)
#   4. dpo from the SFT policy on those pairs, with held-out greedy accuracy before (the SFT policy) and after
# Pairs of the policy's own right and wrong answers teach it where it goes wrong; the generated pairs of
# arithmetic.py (a right answer over made-up mistakes) are ones it does not make, and DPO on them alone did not
# raise held-out accuracy (README, the recipe suite). About 5 minutes on 2 cores.
# Usage: examples/dpo_arithmetic.sh [WORK_DIR] (default: a temporary folder, removed at the end). A WORK_DIR that
# holds data/ and m0/ (a task of scripts/recipe_suite.sh) is trained as it is, with GEN_TOKENS (default 4) as
# the longest answer.
set -euo pipefail
source "$(dirname "$0")/recipe_lib.sh"
recipe_start "$root/examples/dpo_arithmetic.yaml" "${1:-}"

echo "== 4. dpo on the SFT policy's own pairs ($(wc -l < "$work/policy_data/pairs.jsonl") pairs)"
"$rlhf" train --config "$cfg" --model "$sft" --stages dpo --set dpo.data.path="$work/policy_data/pairs.jsonl" \
  --set eval.data.path="$work/data/prompts.jsonl" --set eval.max_new_tokens="${GEN_TOKENS:-4}" \
  --run-dir "$work/runs/dpo" 2>&1 | grep --line-buffered -E "dpo step [0-9]+/[0-9]+: .*eval|eval of|warn"

recipe_result "$work/runs/dpo" DPO
