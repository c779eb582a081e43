#!/usr/bin/env bash
# The starting point of the arithmetic examples in WORK_DIR: the max(a,b) task's data (examples/arithmetic.py
# --op max) in data/, a byte-level BPE tokenizer in tok/ and a random Llama model (hidden 128, 4 layers) in m0/.
# Usage: arithmetic_start.sh RLHF_BINARY WORK_DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rlhf="$1"; work="$2"
quiet="--set run.log_level=warn"
/usr/bin/python3 "$root/examples/arithmetic.py" "$work/data" --op max
"$rlhf" train-tokenizer --corpus "$work/data/corpus.txt" --merges 1 --out "$work/tok" --run-dir "$work/runs/tok" $quiet
"$rlhf" init-model --hidden-size 128 --layers 4 --heads 4 --kv-heads 2 --intermediate-size 384 --vocab-size 300 \
  --tokenizer "$work/tok" --seed 1 --out "$work/m0" --run-dir "$work/runs/init" $quiet
