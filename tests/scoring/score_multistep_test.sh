#!/usr/bin/env bash
# The multi-step arithmetic example task through `rlhf score` with the process checker: every reference
# solution gets all steps right, a solution with one corrupted step gets exactly that step wrong.
#   score_multistep_test.sh RLHF_BINARY PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"; py="$2"; src="$3"
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$py" "$src/examples/multistep.py" "$d/task" --n 60 --eval 10 --seed 3
"$py" - "$d" <<'PY'
import json, re, sys
d = sys.argv[1]
with open(f"{d}/samples.jsonl", "w") as out:
    for i, line in enumerate(open(f"{d}/task/sft.jsonl")):
        row = json.loads(line)
        answer = row["completion"].rsplit(" ", 1)[1]
        out.write(json.dumps({"prompt_id": f"m{i}", "prompt": row["prompt"], "completion": row["completion"],
                              "answer": answer}) + "\n")
        # Corrupt the result of the first step only; the later steps stay as written and still hold.
        first, rest = row["completion"].split("\n", 1)
        lhs, value = first.split("=")
        bad = f"{lhs}={int(value) + 1}\n{rest}"
        out.write(json.dumps({"prompt_id": f"m{i}", "sample_index": 1, "prompt": row["prompt"], "completion": bad,
                              "answer": answer}) + "\n")
PY
"$rlhf" score --samples "$d/samples.jsonl" --out "$d/scored.jsonl" --run-dir "$d/run" \
  --set reward.process_weight=1 --set reward.exact_match_weight=1 --set run.log_level=warn
"$py" - "$d/scored.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 120, len(rows)
for r in rows:
    steps = r["step_rewards"]
    assert len(steps) == r["completion"].count("="), r
    if r.get("sample_index", 0) == 0:
        assert steps == [1.0] * len(steps) and r["reward_parts"]["exact_match"] == 1.0, r
    else:
        assert steps[0] == 0.0 and steps[1:] == [1.0] * (len(steps) - 1), r
    assert abs(r["reward_parts"]["process"] - sum(steps) / len(steps)) < 1e-6
print("multi-step task: reference solutions pass every step; corrupted first steps are caught")
PY
