#!/usr/bin/env bash
# examples/ppo_arithmetic.yaml end to end, with a reward model trained on the SFT policy's own samples:
#   1. data (examples/arithmetic.py --op max), a byte-level tokenizer and a random model, as scripts/demo.sh
#   2. sft: the answer format (stage sft of ppo_arithmetic.yaml)
#   3. 8 samples per training prompt from the SFT policy (rlhf generate), labelled by the exact-match verifier
#      (rlhf score), turned into pairs (examples/verifier_data.py: a right answer over a wrong one of the same
#      prompt; held-out prompts left out), added to the generated pairs of arithmetic.py
#   4. reward_model then ppo (the other stages of ppo_arithmetic.yaml), from the SFT policy
# Ends with the held-out accuracy before and after PPO and the mean KL to the SFT policy (summary.json and
# metrics.jsonl). About 8 minutes on 2 cores. Usage: examples/ppo_arithmetic.sh [WORK_DIR] (default: a
# temporary folder, removed at the end).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh"
rlhf="${BUILD_DIR:-$root/build}/cli/rlhf"
py=/usr/bin/python3
if [ -n "${1:-}" ]; then work="$1"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
quiet="--set run.log_level=warn"
cfg="$root/examples/ppo_arithmetic.yaml"

echo "== 1. data, tokenizer and a random model in $work"
bash "$root/examples/arithmetic_start.sh" "$rlhf" "$work"

echo "== 2. sft"
"$rlhf" train --config "$cfg" --model "$work/m0" --stages sft --set sft.data.path="$work/data/sft.jsonl" \
  --run-dir "$work/runs/sft" $quiet
sft="$work/runs/sft/0-sft/model"

echo "== 3. the SFT policy's samples, labelled by the verifier, as preference pairs"
"$rlhf" generate --model "$sft" --prompts "$work/data/prompts.jsonl" --n 8 --max-new-tokens 4 --temperature 1 \
  --out "$work/samples.jsonl" --run-dir "$work/runs/generate" $quiet 2>/dev/null
"$rlhf" score --samples "$work/samples.jsonl" --out "$work/scored.jsonl" --set reward.exact_match_weight=1 \
  --run-dir "$work/runs/score" $quiet
$py "$root/examples/verifier_data.py" "$work/scored.jsonl" "$work/policy_data"
cat "$work/data/pairs.jsonl" "$work/policy_data/pairs.jsonl" > "$work/rm_pairs.jsonl"

echo "== 4. reward_model, then ppo from the SFT policy"
"$rlhf" train --config "$cfg" --model "$sft" --stages "reward_model;ppo" \
  --set reward_model.data.path="$work/rm_pairs.jsonl" --set rl.data.path="$work/data/prompts.jsonl" \
  --run-dir "$work/runs/ppo" 2>&1 | grep --line-buffered -E "reward_model step [0-9]+/[0-9]+: .*eval|ppo step|eval at|held-out accuracy"

$py - "$work/runs/ppo" <<'PY'
import json, sys
run = sys.argv[1]
s = json.load(open(f"{run}/summary.json"))
kl = [m["kl_ref"] for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "kl_ref" in m]
b, a = s["eval_before"], s["eval_after"]
print(f"held-out greedy accuracy {100 * b['accuracy']:.1f}% -> {100 * a['accuracy']:.1f}% after {s['steps']} PPO steps "
      f"({a['prompts']} prompts); KL to the SFT policy per token: mean {sum(kl) / len(kl):.3f}, max {max(kl):.3f}")
PY
