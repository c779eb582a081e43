#!/usr/bin/env python3
# The figures of a run directory of the main job (scripts/demo.sh, examples/cluster.sh): held-out greedy accuracy
# before -> after with 95% intervals, the prompt ledger and throughput from summary.json; with --cluster also the
# roles, the mean GRPO step's time split (metrics.jsonl) and every process (processes.json).
#   summary.py RUN_DIR [--cluster]
import json
import sys

run = sys.argv[1]
s = json.load(open(f"{run}/summary.json"))
b, a = s["eval_before"], s["eval_after"]
ci = lambda e: f"95% CI {100 * e['accuracy_ci95'][0]:.1f}-{100 * e['accuracy_ci95'][1]:.1f}"
print(f"held-out greedy accuracy: {100 * b['accuracy']:.1f}% ({ci(b)}) after SFT -> {100 * a['accuracy']:.1f}% ({ci(a)}) "
      f"after {s['steps']} GRPO steps, on {a['prompts']} held-out prompts; correct: {a.get('judged_by', 'reward >= 1')}")
for st in s.get("stages", []):
    e = st.get("eval_after")
    print(f"  stage {st['index']} {st['stage']}: {st['wall_seconds']:.0f} s" +
          (f", held-out accuracy after it {100 * e['accuracy']:.1f}% ({ci(e)}) on {e['prompts']} prompts" if e else ""))
print(f"prompt ledger: {s['prompts_trained']} trained, {s['prompts_filtered']} filtered, {s['prompts_dropped']} dropped, "
      f"{s['prompts_released']} released, {s['duplicates']} duplicates, {s['missing']} missing")
t = s["throughput"]
print(f"throughput: rollout {t['rollout_tokens_per_second']:.0f} tokens/s, scorer {t['scorer_samples_per_second']:.0f} "
      f"samples/s, learner {t['learner_samples_per_second']:.0f} samples/s; wall {s['wall_seconds']:.0f} s")
if "--cluster" in sys.argv[2:]:
    r = s["roles"]
    print(f"roles: {r['learner_ranks']} learner ranks, {r['rollout_workers']} rollout workers ({r['weights']} weights, "
          f"{r['rollout_workers_dropped']} dropped, {r['rollout_workers_rejoined']} rejoined), scorer {r['scorer']}")
    steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"stage":"grpo"' in l]
    split = {k: sum(x.get(k, 0) for x in steps) / max(len(steps), 1)
             for k in ["generate_seconds", "score_seconds", "train_seconds", "weight_sync_seconds"]}
    print("mean GRPO step: " + ", ".join(f"{k.replace('_seconds', '')} {v:.3f} s" for k, v in split.items()))
    for e in sorted(json.load(open(f"{run}/processes.json"))["processes"], key=lambda e: e.get("rank", 0)):
        print(f"  rank {e.get('rank', '?')}: {e['role']} {e['index']} pid {e.get('pid')} {e.get('address') or ''} {e['state']}")
