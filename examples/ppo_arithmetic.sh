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
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh" rlhf
rlhf="${BUILD_DIR:-$root/build}/cli/rlhf"
py=/usr/bin/python3
if [ -n "${1:-}" ]; then work="$1"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
cfg="$root/examples/ppo_arithmetic.yaml"

bash "$root/examples/policy_data.sh" "$rlhf" "$cfg" "$work"
sft="$work/runs/sft/0-sft/model"
cat "$work/data/pairs.jsonl" "$work/policy_data/pairs.jsonl" > "$work/rm_pairs.jsonl"

echo "== 4. reward_model (the generated pairs and the policy's), then ppo from the SFT policy"
"$rlhf" train --config "$cfg" --model "$sft" --stages "reward_model;ppo" \
  --set reward_model.data.path="$work/rm_pairs.jsonl" --set rl.data.path="$work/data/prompts.jsonl" \
  --set rl.max_new_tokens="${GEN_TOKENS:-4}" --set eval.max_new_tokens="${GEN_TOKENS:-4}" \
  --run-dir "$work/runs/ppo" 2>&1 | grep --line-buffered -E "reward_model step [0-9]+/[0-9]+: .*eval|ppo step|eval of|held-out accuracy"

$py - "$work/runs/ppo" <<'PY'
import json, sys
run = sys.argv[1]
s = json.load(open(f"{run}/summary.json"))
kl = [m["kl_ref"] for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "kl_ref" in m]
b, a = s["eval_before"], s["eval_after"]
print(f"held-out greedy accuracy {100 * b['accuracy']:.1f}% -> {100 * a['accuracy']:.1f}% after {s['steps']} PPO steps "
      f"({a['prompts']} prompts); KL to the SFT policy per token: mean {sum(kl) / len(kl):.3f}, max {max(kl):.3f}")
PY
