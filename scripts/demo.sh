#!/usr/bin/env bash
# The main job: installs what is missing, builds, and trains a small model from scratch with online RL on a
# task it generates, as one `rlhf train` command (examples/grpo_arithmetic.yaml), ending with measured results:
#   1. the task (examples/arithmetic.py --op max): "max(a,b)=" prompts with answers; a byte-level BPE
#      tokenizer; a random Llama model (hidden 128, 4 layers)
#   2. rlhf train: a brief SFT stage (the answer format), then online GRPO with the exact-match verifier,
#      the embedded rollout worker and scorer talking gRPC in process; held-out greedy accuracy before,
#      during and after; progress lines
#   3. the figures of summary.json: accuracy before -> after with 95% intervals, the prompt ledger, throughput
# A few minutes on 2 CPU cores. Set DEMO_DIR to keep the files (default: a temporary folder).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh" rlhf  # the binary it runs, not the tests and benchmarks
build="${BUILD_DIR:-$root/build}"
rlhf="$build/cli/rlhf"
py=/usr/bin/python3
if [ -n "${DEMO_DIR:-}" ]; then work="$DEMO_DIR"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
quiet="--set run.log_level=warn"

echo "== 1. task data, tokenizer and a random model (Llama: hidden 128, 4 layers) in $work"
bash "$root/examples/arithmetic_start.sh" "$rlhf" "$work"

echo "== 2. rlhf train: sft -> grpo (online: rollout worker, scorer, learner, coordinator in one process)"
start=$(date +%s)
"$rlhf" train --config "$root/examples/grpo_arithmetic.yaml" --model "$work/m0" \
  --set sft.data.path="$work/data/sft.jsonl" --set rl.data.path="$work/data/prompts.jsonl" \
  --run-dir "$work/runs/train" 2>&1 | grep --line-buffered -E " (sft|grpo) step|stage [0-9]|eval of|online,|held-out accuracy|ending at step|before the first step|CANNOT LEARN|NOT LEARNING|little to learn"
echo "trained in $(( $(date +%s) - start )) s"

echo "== 3. results (runs/train/summary.json)"
$py "$root/examples/summary.py" "$work/runs/train"
echo "run directory: config.yaml, log.txt, metrics.jsonl, summary.json, checkpoints/, 0-sft/model, 1-grpo/model, 1-grpo/eval_*.jsonl"
