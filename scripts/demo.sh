#!/usr/bin/env bash
# The main job: installs what is missing, builds, and trains a small model from scratch on a task it
# generates, with the two first stages of RLHF as one `rlhf train` command, ending with measured results:
#   1. the arithmetic task (examples/arithmetic.py): SFT pairs "a+b=" -> sum, preference pairs (right sum
#      vs one 20-40 off), held-out prompts with answers; a byte-level BPE tokenizer; a random Llama model
#   2. exact match of greedy answers on the held-out prompts before training
#   3. rlhf train: sft -> reward_model (examples/sft_reward_model.yaml), with progress lines
#   4. exact match after SFT, held-out accuracy of the reward model, and the learner's throughput
# A few minutes on 2 CPU cores. Set DEMO_DIR to keep the files (default: a temporary folder).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh"
build="${BUILD_DIR:-$root/build}"
rlhf="$build/cli/rlhf"
py=/usr/bin/python3
if [ -n "${DEMO_DIR:-}" ]; then work="$DEMO_DIR"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
quiet="--set run.log_level=warn"

echo "== 1. task data, tokenizer and a random model (Llama: hidden 192, 4 layers) in $work"
$py "$root/examples/arithmetic.py" "$work/data" --n 3000
"$rlhf" train-tokenizer --corpus "$work/data/corpus.txt" --merges 1 --out "$work/tok" --run-dir "$work/runs/tok" $quiet
"$rlhf" init-model --hidden-size 192 --layers 4 --heads 6 --kv-heads 2 --intermediate-size 512 --vocab-size 300 \
  --tokenizer "$work/tok" --seed 1 --out "$work/m0" --run-dir "$work/runs/init" $quiet

echo "== 2. greedy answers of the untrained model on 200 held-out prompts"
"$rlhf" generate --model "$work/m0" --prompts "$work/data/eval.jsonl" --temperature 0 --max-new-tokens 6 \
  --out "$work/before.jsonl" --run-dir "$work/runs/gen0" $quiet 2>/dev/null
$py "$root/examples/exact_match.py" "$work/before.jsonl" --show 0

echo "== 3. rlhf train: sft -> reward_model"
start=$(date +%s)
"$rlhf" train --config "$root/examples/sft_reward_model.yaml" --model "$work/m0" \
  --set sft.data.path="$work/data/sft.jsonl" --set reward_model.data.path="$work/data/pairs.jsonl" \
  --run-dir "$work/runs/train" 2>&1 | grep --line-buffered -E " (sft|reward_model) step|stage [0-9]|checkpoint .*-0000|saved"
echo "trained in $(( $(date +%s) - start )) s"

echo "== 4. results"
"$rlhf" generate --model "$work/runs/train/0-sft/model" --prompts "$work/data/eval.jsonl" --temperature 0 \
  --max-new-tokens 6 --out "$work/after.jsonl" --run-dir "$work/runs/gen1" $quiet 2>/dev/null
printf 'after SFT:    '
$py "$root/examples/exact_match.py" "$work/after.jsonl" --show 3
$py - "$work/runs/train/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sft = [r for r in rows if r["stage"] == "sft"]
rm = [r for r in rows if r["stage"] == "reward_model"]
print(f"SFT:          train loss {sft[0]['loss']:.3f} -> {sft[-1]['loss']:.3f}, held-out loss {sft[-1]['eval/loss']:.3f} "
      f"(perplexity {sft[-1]['eval/perplexity']:.2f}), {len(sft)} steps, "
      f"{sum(r['tokens_per_second'] for r in sft) / len(sft):.0f} tokens/s")
print(f"reward model: held-out accuracy {100 * rm[-1]['eval/accuracy']:.1f}% (right sum preferred over one 20-40 off), "
      f"margin {rm[-1]['eval/margin']:.2f}, {len(rm)} steps")
PY
echo "run directory: config.yaml, log.txt, metrics.jsonl, checkpoints/, 0-sft/model, 1-reward_model/model (HF folders)"
