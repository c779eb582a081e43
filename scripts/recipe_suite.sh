#!/usr/bin/env bash
# The recipe suite: the example recipes (examples/grpo_arithmetic.yaml, dpo_arithmetic.sh, ppo_arithmetic.sh) on five
# small generated tasks they were not tuned for (examples/tasks.py: sort, reverse, add, count, digitsum), with
# only the data paths and the generation lengths changed. Per task: a byte-level BPE tokenizer and a random
# Llama model (hidden 128, 4 layers) made as scripts/demo.sh makes them, then one `rlhf train` per recipe.
# Prints a table: held-out greedy accuracy after the SFT stage and after the RL / preference stage, each with
# its 95% interval, the difference, SFT's steps and the wall time; the last line is one JSON object.
#   scripts/recipe_suite.sh WORK_DIR [--recipes grpo,dpo,ppo] [--tasks sort,reverse,add,count,digitsum]
# About 3 to 5 minutes per task and recipe on 2 cores (ppo: 8); a run already in WORK_DIR is not run again. Needs the rlhf binary (scripts/build.sh rlhf).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:?usage: recipe_suite.sh WORK_DIR [--recipes grpo,dpo,ppo] [--tasks ...]}"; shift
recipes=grpo,dpo,ppo; tasks=sort,reverse,add,count,digitsum
while [ $# -gt 0 ]; do
  case "$1" in
    --recipes) recipes="$2"; shift 2;;
    --tasks) tasks="$2"; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
rlhf="${BUILD_DIR:-$root/build}/cli/rlhf"
py=/usr/bin/python3
[ -x "$rlhf" ] || bash "$root/scripts/build.sh" rlhf
quiet="--set run.log_level=warn"
export OMP_WAIT_POLICY=passive
mkdir -p "$work"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
for t in ${tasks//,/ }; do
  d="$work/$t"
  if [ ! -f "$d/m0/config.json" ]; then
    $py "$root/examples/tasks.py" "$d/data" --task "$t"
    "$rlhf" train-tokenizer --corpus "$d/data/corpus.txt" --merges 1 --out "$d/tok" --run-dir "$d/runs/tok" $quiet
    "$rlhf" init-model --hidden-size 128 --layers 4 --heads 4 --kv-heads 2 --intermediate-size 384 --vocab-size 300 \
      --tokenizer "$d/tok" --seed 1 --out "$d/m0" --run-dir "$d/runs/init" $quiet
  fi
  # Generation length: the longest answer in characters (the tokenizer has no merges) and the end token.
  n=$($py -c "import json,sys; print(max(len(json.loads(l)['answer']) for l in open(sys.argv[1])) + 1)" "$d/data/prompts.jsonl")
  for r in ${recipes//,/ }; do
    run="$d/runs/$r"
    [ -f "$run/summary.json" ] && continue
    rm -rf "$run"
    start=$(date +%s)
    echo "== $t / $r"
    case "$r" in
      grpo)
        "$rlhf" train --config "$root/examples/grpo_arithmetic.yaml" --model "$d/m0" --set sft.data.path="$d/data/sft.jsonl" \
          --set rl.data.path="$d/data/prompts.jsonl" --set rl.max_new_tokens="$n" --set eval.max_new_tokens="$n" \
          --run-dir "$run" > "$run.log" 2>&1 || { echo "$t / $r failed: $run.log"; tail -5 "$run.log"; };;
      dpo|ppo)  # examples/{dpo,ppo}_arithmetic.sh on the task: sft, the SFT policy's own answers as pairs, then dpo
                # on them, or a reward model on them and ppo
        rm -rf "$d/runs/sft" "$d/policy_data"
        GEN_TOKENS="$n" bash "$root/examples/${r}_arithmetic.sh" "$d" > "$run.log" 2>&1 ||
          { echo "$t / $r failed: $run.log"; tail -5 "$run.log"; };;
      *) echo "unknown recipe $r" >&2; exit 2;;
    esac
    grep -hE "ending at step|CANNOT LEARN|NOT LEARNING|little to learn|before the first step" "$run.log" "$d/runs/sft/log.txt" 2>/dev/null | cut -c25- || true
    echo "$(( $(date +%s) - start ))" > "$run.wall"
    echo "   $(cat "$run.wall") s"
  done
done
$py - "$work" "$tasks" "$recipes" <<'PY'
import json, os, sys
work, tasks, recipes = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
rows, out = [], {}
pct = lambda e: f"{100 * e['accuracy']:.1f}% ({100 * e['accuracy_ci95'][0]:.1f}-{100 * e['accuracy_ci95'][1]:.1f})"
print("| task | recipe | after SFT (95% CI) | after RL / preference (95% CI) | change | SFT steps | wall |")
print("|---|---|---|---|---|---|---|")
for t in tasks:
    for r in recipes:
        path = os.path.join(work, t, "runs", r, "summary.json")
        if not os.path.exists(path):
            print(f"| {t} | {r} | (no summary) | | | | |")
            continue
        s = json.load(open(path))
        b, a = s["eval_before"], s["eval_after"]
        sft_run = os.path.join(work, t, "runs", "sft" if r != "grpo" else r)  # dpo, ppo: their SFT ran first, alone
        sft_steps = sum(1 for l in open(os.path.join(sft_run, "metrics.jsonl")) if '"stage":"sft"' in l)
        wall_file = os.path.join(work, t, "runs", r + ".wall")
        wall = int(open(wall_file).read()) if os.path.exists(wall_file) else round(s["wall_seconds"])
        d = 100 * (a["accuracy"] - b["accuracy"])
        print(f"| {t} | {r} | {pct(b)} | {pct(a)} | {d:+.1f} | {sft_steps} | {wall} s |")
        out[f"{t}/{r}"] = {"after_sft": b["accuracy"], "after": a["accuracy"], "change_points": round(d, 1),
                          "prompts": a["prompts"], "sft_steps": sft_steps, "wall_seconds": wall}
ch = [v["change_points"] for v in out.values()]
print(json.dumps({"suite": out, "min_change_points": min(ch) if ch else None,
                  "all_at_least_10_points": bool(ch) and min(ch) >= 10}))
PY
