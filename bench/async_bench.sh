#!/usr/bin/env bash
# Asynchronous RL against the strictly on-policy loop, on the README's main job as separate processes: the
# learner and coordinator (`rlhf train`), two rollout workers and a scorer (`rlhf serve`), weights over the
# collective. Every run starts from the same SFT model and trains the same number of GRPO steps, at
# rl.max_staleness 0, 1 and 2; then at max_staleness 0 with one lease per worker per batch (the old fixed
# chunks: roles.lease_prompts=16) and with small leases (roles.lease_prompts=4), each with both workers even
# and with rollout worker 1 made 3x slower (RLHF_FAULT_SLOW_GENERATE=3): how much throughput each keeps.
#
# On a machine with 2 or more cores the learner side is pinned to core 0 and the rollout side (both workers
# and the scorer) to core 1, one thread per process, as they would run on separate machines; the figures
# compare runs of this one invocation only. Prints the machine, one line per run, and last one JSON line.
#   bench/async_bench.sh [STEPS]   (default 100; BUILD_DIR picks the build, default build/)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
rlhf="$build/cli/rlhf"
py=/usr/bin/python3
steps="${1:-100}"
[ -x "$rlhf" ] || { echo "build rlhf first: cmake --build $build --target rlhf"; exit 1; }
d="$(mktemp -d)"
source "$root/tests/processes.sh"  # pids, free_ports, stop on exit
export OMP_WAIT_POLICY=passive

cores=$(nproc)
isa=$(grep -m1 -o -w -E 'amx_tile' /proc/cpuinfo || true)
for f in avx512f avx512_bf16 avx2; do grep -q -m1 -w "$f" /proc/cpuinfo && isa="$isa $f"; done
model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
if [ "$cores" -ge 2 ]; then
  learner_pin=(taskset -c 0); rollout_pin=(taskset -c 1); pinning="learner on core 0, rollout side on core 1"
else
  learner_pin=(); rollout_pin=(); pinning="one core: not pinned (the roles share it)"
fi
echo "machine: $model | $cores cores | ISA:${isa:- none of amx/avx512/avx2} | OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "threads: 1 per process (run.threads=1, OMP_WAIT_POLICY=passive); $pinning"

echo "== task, tokenizer, model and a brief SFT (the main job's first stage)"
bash "$root/examples/arithmetic_start.sh" "$rlhf" "$d" > "$d/start.log" 2>&1
"$rlhf" train --config "$root/examples/grpo_arithmetic.yaml" --model "$d/m0" --stages sft \
  --set sft.data.path="$d/data/sft.jsonl" --set run.log_level=warn --run-dir "$d/sft" > "$d/sft.log" 2>&1
sft="$d/sft/0-sft/model"
grep -m1 "runtime:" "$d/sft/log.txt" | sed 's/.* I /blas: /' || true

# run NAME STALENESS LEASE_PROMPTS SLOW: one GRPO run of $steps steps; prints its line, leaves summary.json.
run() {
  local name="$1" k="$2" lease="$3" slow="$4"
  local ports=($(free_ports "$py" 3)) started=()
  local common=(--config "$root/examples/grpo_arithmetic.yaml" --set run.threads=1 --set run.log_level=warn)
  for w in 0 1; do
    local env=()
    [ "$w" = 1 ] && [ "$slow" != 1 ] && env=(env RLHF_FAULT_SLOW_GENERATE="$slow")
    "${env[@]}" "${rollout_pin[@]}" timeout -k 10 1800 "$rlhf" serve rollout --model "$sft" "${common[@]}" \
      --address "127.0.0.1:${ports[$w]}" --run-dir "$d/$name/w$w" > "$d/$name-w$w.log" 2>&1 &
    pids+=($!); started+=($!)
  done
  "${rollout_pin[@]}" timeout -k 10 1800 "$rlhf" serve scorer "${common[@]}" --address "127.0.0.1:${ports[2]}" \
    --run-dir "$d/$name/scorer" > "$d/$name-scorer.log" 2>&1 &
  pids+=($!); started+=($!)
  if ! "${learner_pin[@]}" timeout -k 10 1800 "$rlhf" train "${common[@]}" --model "$sft" --stages grpo \
      --set rl.data.path="$d/data/prompts.jsonl" --set rl.steps="$steps" --set eval.every=0 \
      --set rl.max_staleness="$k" --set rl.tis_cap=2 --set roles.lease_prompts="$lease" \
      --set "roles.rollout_addresses=[127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}]" \
      --set "roles.scorer_address=127.0.0.1:${ports[2]}" --set weights.transport=collective \
      --run-dir "$d/$name/run" > "$d/$name-train.log" 2>&1; then
    echo "run $name failed:"; tail -20 "$d/$name-train.log"; exit 1
  fi
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${started[@]}"; do wait "$p" 2>/dev/null || true; done
  "$py" - "$d/$name/run/summary.json" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
t, a = s["throughput"], s["eval_after"]
st = {int(k): v for k, v in s["staleness"].items()}
print(f"{sys.argv[2]:>16}: {t['steps_per_minute']:6.1f} steps/min, rollout {t['rollout_tokens_per_wall_second']:6.0f} tok/s, "
      f"held-out accuracy {100 * a['accuracy']:.1f}% (95% CI {100 * a['accuracy_ci95'][0]:.1f}-{100 * a['accuracy_ci95'][1]:.1f}), "
      f"staleness {dict(sorted(st.items()))}, leases expired {s['events'].get('lease_expired', 0)}, "
      f"duplicates {s['duplicates']}, missing {s['missing']}")
PY
}

echo "== GRPO, $steps steps each, 2 rollout workers, 32 prompts x 8 samples per step"
run staleness_0 0 0 1
run staleness_1 1 0 1
run staleness_2 2 0 1
run chunks_even 0 16 1
run chunks_slow 0 16 3
run leases_even 0 4 1
run leases_slow 0 4 3
"$py" - "$d" "$steps" "$cores" "$pinning" <<'PY'
import json, sys
d, steps = sys.argv[1], int(sys.argv[2])
s = {n: json.load(open(f"{d}/{n}/run/summary.json")) for n in ("staleness_0", "staleness_1", "staleness_2", "chunks_even", "chunks_slow", "leases_even", "leases_slow")}
spm = {n: v["throughput"]["steps_per_minute"] for n, v in s.items()}
tok = {n: v["throughput"]["rollout_tokens_per_wall_second"] for n, v in s.items()}
acc = {n: v["eval_after"]["accuracy"] for n, v in s.items()}
ci0 = s["staleness_0"]["eval_after"]["accuracy_ci95"]
out = {"bench": "async", "steps": steps, "cores": int(sys.argv[3]), "pinning": sys.argv[4]}
for k in (0, 1, 2):
    n = f"staleness_{k}"
    out[f"steps_per_minute_staleness_{k}"] = round(spm[n], 2)
    out[f"rollout_tokens_per_second_staleness_{k}"] = round(tok[n], 1)
    out[f"accuracy_staleness_{k}"] = round(acc[n], 4)
for k in (1, 2):
    out[f"speedup_staleness_{k}"] = round(spm[f"staleness_{k}"] / spm["staleness_0"], 3)
    out[f"learning_held_staleness_{k}"] = ci0[0] <= acc[f"staleness_{k}"] <= ci0[1] or acc[f"staleness_{k}"] > ci0[1]
out["accuracy_ci95_staleness_0"] = [round(x, 4) for x in ci0]
out["slow_worker_throughput_kept_chunks"] = round(spm["chunks_slow"] / spm["chunks_even"], 3)
out["slow_worker_throughput_kept_leases"] = round(spm["leases_slow"] / spm["leases_even"], 3)
print(f"speed-up at max_staleness 1: {out['speedup_staleness_1']}x, at 2: {out['speedup_staleness_2']}x; learning held "
      f"(accuracy within or above the on-policy run's 95% interval): {out['learning_held_staleness_1']}, {out['learning_held_staleness_2']}")
print(f"one worker 3x slower: fixed chunks keep {100 * out['slow_worker_throughput_kept_chunks']:.0f}% of their steps/min, "
      f"leases of 4 prompts keep {100 * out['slow_worker_throughput_kept_leases']:.0f}% of theirs")
print(json.dumps(out))
PY
