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
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh" rlhf
rlhf="${BUILD_DIR:-$root/build}/cli/rlhf"
py=/usr/bin/python3
if [ -n "${1:-}" ]; then work="$1"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
cfg="$root/examples/dpo_arithmetic.yaml"

bash "$root/examples/policy_data.sh" "$rlhf" "$cfg" "$work"
sft="$work/runs/sft/0-sft/model"

echo "== 4. dpo on the SFT policy's own pairs ($(wc -l < "$work/policy_data/pairs.jsonl") pairs)"
"$rlhf" train --config "$cfg" --model "$sft" --stages dpo --set dpo.data.path="$work/policy_data/pairs.jsonl" \
  --set eval.data.path="$work/data/prompts.jsonl" --set eval.max_new_tokens="${GEN_TOKENS:-4}" \
  --run-dir "$work/runs/dpo" 2>&1 | grep --line-buffered -E "dpo step [0-9]+/[0-9]+: .*eval|eval of|warn"

$py - "$work/runs/dpo" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
b, a = s["eval_before"], s["eval_after"]
ci = lambda e: f"95% CI {100 * e['accuracy_ci95'][0]:.1f}-{100 * e['accuracy_ci95'][1]:.1f}"
print(f"held-out greedy accuracy: {100 * b['accuracy']:.1f}% ({ci(b)}) after SFT -> {100 * a['accuracy']:.1f}% ({ci(a)}) "
      f"after DPO, on {a['prompts']} held-out prompts")
PY
