#!/usr/bin/env bash
# examples/verifier_data.py: scored samples -> judge and pair data of the training split only. The split must be
# the one rlhf computes (data check counts it on the same prompts), every right sample is " Yes", every wrong
# one " No", and every pair puts a right answer over a wrong one of the same prompt.
set -euo pipefail
rlhf="$1"; py="$2"; root="$3"
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
"$py" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
with open(f"{d}/prompts.jsonl", "w") as p, open(f"{d}/scored.jsonl", "w") as s, open(f"{d}/sft.jsonl", "w") as t:
    for i in range(300):
        p.write(json.dumps({"prompt": f"max({i},7)=", "answer": str(max(i, 7))}) + "\n")
        t.write(json.dumps({"prompt": f"max({i},7)=", "completion": str(max(i, 7))}) + "\n")
        for k, c in enumerate([str(max(i, 7)), "7" if i > 7 else "0", ""]):
            s.write(json.dumps({"prompt": f"max({i},7)=", "completion": c, "sample_index": k,
                                "reward_parts": {"exact_match": 1.0 if c == str(max(i, 7)) else 0.0}}) + "\n")
PY
"$py" "$root/examples/verifier_data.py" "$d/scored.jsonl" "$d/out" --pairs 2 --heldout-fraction 0.2
"$py" "$root/examples/verifier_data.py" "$d/scored.jsonl" "$d/out2" --heldout-fraction 0.2 --answers "$d/sft.jsonl" \
  --answers-repeat 2
train=$("$rlhf" data check --data "$d/prompts.jsonl" --set data.heldout_fraction=0.2 --run-dir "$d/run" --set run.log_level=warn |
        sed -n 's/^split: train \([0-9]*\),.*/\1/p')
"$py" - "$d/out" "$train" "$d/out2" <<'PY'
import json, sys
out, train = sys.argv[1], int(sys.argv[2])
# With --answers: 2 rows per training prompt that complete the prompt with the right answer, then "\nRight? Yes".
extra = [json.loads(l) for l in open(f"{sys.argv[3]}/judge.jsonl")]
rows = [j for j in extra if j["prompt"].endswith("=")]
assert len(rows) == 2 * train and len(extra) == 5 * train, (len(rows), len(extra))
for j in rows:
    x = int(j["prompt"][4:].split(",")[0])
    assert j["completion"] == f"{max(x, 7)}\nRight? Yes", j
judge = [json.loads(l) for l in open(f"{out}/judge.jsonl")]
pairs = [json.loads(l) for l in open(f"{out}/pairs.jsonl")]
prompts = {j["prompt"].split("=")[0] for j in judge}
assert len(prompts) == train, (len(prompts), train)
assert len(judge) == 3 * train, len(judge)
for j in judge:
    q, rest = j["prompt"].split("=", 1)
    x = int(q[4:].split(",")[0])
    answer = rest[: -len("\nRight?")]
    assert j["completion"] == (" Yes" if answer == str(max(x, 7)) else " No"), j
assert len(pairs) == 2 * train, len(pairs)
for p in pairs:
    x = int(p["prompt"][4:].split(",")[0])
    assert p["chosen"] == str(max(x, 7)) and p["rejected"] != p["chosen"], p
print(f"ok: {train} training prompts, {len(judge)} judge examples, {len(pairs)} pairs")
PY
