#!/usr/bin/env bash
# The main job, until the end-to-end RL example exists: builds, then exercises the most complete real
# pipeline there is today and ends with measured figures:
#   1. writes random Llama / Qwen2 / Qwen3 checkpoints with an independent writer (python3-torch),
#   2. loads them and computes logits with `rlhf logits`,
#   3. compares against an independent float64 implementation of the HF forward pass,
#   4. creates a model with `rlhf init-model` and measures forward / forward+backward throughput,
#   5. trains PPO (trainer/algo losses) on the grid world and compares it with value iteration.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/build.sh"
build="${BUILD_DIR:-$root/build}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py=/usr/bin/python3
ref="$root/tests/python/hf_reference.py"
ids="1,17,5,99,3,42,42,7,0,63,11,2,88,31,64,19"
echo "== 1-3. logits of checkpoints written by other software vs an independent forward pass"
for spec in "llama:--arch llama --llama3-rope" "qwen2:--arch qwen2 --tie --shards 3" "qwen3:--arch qwen3 --dtype bf16"; do
  name="${spec%%:*}"; args="${spec#*:}"
  $py "$ref" gen --out "$work/$name" $args
  "$build/cli/rlhf" logits --model "$work/$name" --ids "$ids" --dtype float32 --out "$work/$name.safetensors" \
    --run-dir "$work/run-$name" --set run.log_level=warn
  printf '%-6s %-40s ' "$name" "($args)"
  $py "$ref" compare --model "$work/$name" --ids "$ids" --ours "$work/$name.safetensors" --tol 1e-4
done
echo "== 4. rlhf init-model + throughput of the 'small' config (hidden 768, 12 layers, vocab 32000)"
"$build/cli/rlhf" init-model --arch qwen3 --hidden-size 64 --layers 2 --heads 4 --kv-heads 2 \
  --intermediate-size 128 --vocab-size 512 --seed 1 --out "$work/init" --run-dir "$work/run-init" --set run.log_level=warn
echo "init-model wrote: $(ls "$work/init" | tr '\n' ' ')"
"$build/bench/model_bench" --iters 2 2>&1 | grep -v ' I '
echo "== 5. PPO on the grid world of the study notes, beside tabular value iteration"
"$build/cli/rlhf" gridworld --size 6 --walls "0,2;1,2;2,2;4,1;4,2;4,3;4,4;2,4" --goal 0,5 --seed 1 \
  --run-dir "$work/run-gridworld" 2> >(grep --line-buffered 'PPO iteration' >&2)
