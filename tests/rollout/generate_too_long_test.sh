#!/usr/bin/env bash
# rlhf generate refuses a prompt that cannot fit the model's context with one line naming the prompt and the
# limit, before it loads the weights (a 100,000-token prompt once grew to 24 GB and was killed by the kernel);
# a prompt that fits but leaves less room than --max-new-tokens ends at the context (finish_reason length).
#   generate_too_long_test.sh RLHF PYTHON3
set -euo pipefail
rlhf="$1"; py="$2"
d="$(mktemp -d)"
trap 'rm -rf "$d"' EXIT
q="--set run.log_level=warn"
for i in $(seq 1 50); do echo "What is $i + 2? The answer is $((i+2))."; done > "$d/c.txt"
"$rlhf" train-tokenizer --corpus "$d/c.txt" --merges 20 --out "$d/tok" --run-dir "$d/r1" $q
"$rlhf" init-model --tokenizer "$d/tok" --vocab-size 300 --hidden-size 32 --layers 1 --heads 2 --kv-heads 1 \
  --intermediate-size 64 --out "$d/m" --run-dir "$d/r2" $q
context=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['max_position_embeddings'])" "$d/m/config.json")
"$py" - "$d" "$context" <<'PY'
import json, sys
d, context = sys.argv[1], int(sys.argv[2])
with open(f"{d}/long.jsonl", "w") as f:
    f.write(json.dumps({"prompt_ids": [5, 6, 7]}) + "\n")
    f.write(json.dumps({"prompt_ids": [5] * 100000}) + "\n")
with open(f"{d}/edge.jsonl", "w") as f:
    f.write(json.dumps({"prompt_ids": [5] * (context - 2)}) + "\n")
PY
start=$(date +%s)
if timeout 120 "$rlhf" generate --model "$d/m" --prompts "$d/long.jsonl" --out "$d/g.jsonl" --max-new-tokens 8 \
     --run-dir "$d/r3" $q > "$d/out.txt" 2>&1; then
  echo "a 100,000-token prompt was accepted"; exit 1
fi
cat "$d/out.txt"
grep -q "long.jsonl:2: the prompt has 100000 tokens; the model's context is $context" "$d/out.txt"
[ $(( $(date +%s) - start )) -lt 60 ]
test ! -f "$d/g.jsonl"
timeout 120 "$rlhf" generate --model "$d/m" --prompts "$d/edge.jsonl" --out "$d/e.jsonl" --max-new-tokens 50 \
  --temperature 0 --run-dir "$d/r4" $q
"$py" - "$d/e.jsonl" "$context" <<'PY'
import json, sys
s = [json.loads(l) for l in open(sys.argv[1])]
assert len(s) == 1 and len(s[0]["completion_ids"]) == 2 and s[0]["finish_reason"] == "length", s
assert len(s[0]["prompt_ids"]) + len(s[0]["completion_ids"]) == int(sys.argv[2])
print(f"a prompt 2 tokens short of the context ({sys.argv[2]}) ended at it: {len(s[0]['completion_ids'])} tokens, length")
PY
