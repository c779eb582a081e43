#!/usr/bin/env bash
# The main job (examples/grpo_arithmetic.yaml: SFT, then online GRPO on max(a,b)) with every role in its own
# process under one mpirun on loopback: `rlhf run` gives out the roles by rank from the cluster section
#   rank 0      learner 0, which also coordinates (the step loop) and hosts the rendezvous store
#   rank 1      learner 1 (data parallel with learner 0: each trains on half of every batch)
#   ranks 2, 3  rollout workers (weights from learner 0 over the collective, in buckets with checksums)
#   rank 4      the scorer (exact-match verifier; cluster.scorers=2 and -np 6 for two replicas)
# and ends with the figures of summary.json and each step's time split (generate, score, train, weight sync)
# from metrics.jsonl. Across hosts, give mpirun a hostfile (--hostfile FILE); the roles find each other
# through the store on learner 0's host. Usage: cluster.sh RUN_DIR [extra rlhf args, e.g. --set rl.steps=20]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 RUN_DIR [--set key=value ...]"; exit 2; }
run="$1"; shift
build="${BUILD_DIR:-$root/build}"
rlhf="$build/cli/rlhf"
py=/usr/bin/python3
command -v mpirun > /dev/null || { echo "mpirun is missing: bash scripts/setup.sh installs it"; exit 1; }
[ -x "$rlhf" ] || bash "$root/scripts/build.sh" rlhf
work="$run/work"
mkdir -p "$work"

echo "== 1. task data, tokenizer and a random model (Llama: hidden 128, 4 layers) in $work"
[ -f "$work/m0/config.json" ] || bash "$root/examples/arithmetic_start.sh" "$rlhf" "$work"

echo "== 2. mpirun -np 5 rlhf run: 2 learner ranks, 2 rollout workers, a scorer (one thread each)"
start=$(date +%s)
# Five processes share this machine's cores: one thread each, and OpenMP threads that sleep while they wait.
OMP_WAIT_POLICY=passive mpirun --allow-run-as-root --oversubscribe -x OMP_WAIT_POLICY -np 5 \
  "$rlhf" run --config "$root/examples/grpo_arithmetic.yaml" --model "$work/m0" \
  --set cluster.learners=2 --set cluster.rollout_workers=2 --set cluster.scorers=1 --set run.threads=1 \
  --set sft.data.path="$work/data/sft.jsonl" --set rl.data.path="$work/data/prompts.jsonl" \
  --run-dir "$run" "$@" 2>&1 \
  | { grep --line-buffered -E " (sft|grpo) step|stage [0-9]|eval of|online,|held-out accuracy|rlhf run:|coordinates|dropped|rejoins|error" || true; }
echo "trained in $(( $(date +%s) - start )) s"

echo "== 3. results ($run/summary.json, metrics.jsonl, processes.json)"
$py "$root/examples/summary.py" "$run" --cluster
