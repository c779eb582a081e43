# Sourced by the recipes that learn from the SFT policy's own answers (dpo_arithmetic.sh, ppo_arithmetic.sh).
#   recipe_start CONFIG [WORK_DIR]: builds rlhf; sets root, rlhf, py, cfg, work (WORK_DIR, or a temporary folder
#     removed at the end) and sft; runs policy_data.sh (data, tokenizer and model unless WORK_DIR holds them; the
#     SFT stage of CONFIG; 8 answers per training prompt, scored, as pairs in $work/policy_data/pairs.jsonl)
#   recipe_result RUN_DIR WHAT: the held-out greedy accuracy before and after the run's evaluated stage, with
#     95% intervals and how answers were judged (summary.json), and the mean KL to the SFT policy when logged
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
recipe_start() {
  bash "$root/scripts/build.sh" rlhf
  rlhf="${BUILD_DIR:-$root/build}/cli/rlhf"
  py=/usr/bin/python3
  cfg="$1"
  if [ -n "${2:-}" ]; then work="$2"; mkdir -p "$work"; else work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT; fi
  bash "$root/examples/policy_data.sh" "$rlhf" "$cfg" "$work"
  sft="$work/runs/sft/0-sft/model"
}
recipe_result() {
  "$py" - "$1" "$2" <<'PY'
import json, sys
run, what = sys.argv[1], sys.argv[2]
s = json.load(open(f"{run}/summary.json"))
b, a = s["eval_before"], s["eval_after"]
ci = lambda e: f"95% CI {100 * e['accuracy_ci95'][0]:.1f}-{100 * e['accuracy_ci95'][1]:.1f}"
kl = [m["kl_ref"] for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "kl_ref" in m]
print(f"held-out greedy accuracy: {100 * b['accuracy']:.1f}% ({ci(b)}) after SFT -> {100 * a['accuracy']:.1f}% ({ci(a)}) "
      f"after {what}, on {a['prompts']} held-out prompts; correct: {a.get('judged_by', '?')}" +
      (f"; KL to the SFT policy per token: mean {sum(kl) / len(kl):.3f}, max {max(kl):.3f}" if kl else ""))
PY
}
