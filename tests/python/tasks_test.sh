#!/usr/bin/env bash
# examples/tasks.py: every task of the recipe suite writes answers that are right (recomputed here from each
# prompt's text, independently of the generator), pairs whose chosen answer is the right one and whose rejected
# one is not, distinct prompts, and files rlhf reads as the kinds the recipes train on.
set -euo pipefail
rlhf="$1"; py="$2"; root="$3"
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
for t in sort reverse add count digitsum; do
  "$py" "$root/examples/tasks.py" "$d/$t" --task "$t" --max 400
  "$rlhf" data check --data "$d/$t/prompts.jsonl" --run-dir "$d/runs/$t" --set run.log_level=warn > "$d/$t.check"
  grep -q "loaded 400, skipped 0" "$d/$t.check" || { cat "$d/$t.check"; exit 1; }
done
"$py" - "$d" <<'PY'
import json, re, sys
d = sys.argv[1]
def truth(p):
    m = re.fullmatch(r"sort ([a-h]{4})=", p)
    if m: return "".join(sorted(m.group(1)))
    m = re.fullmatch(r"rev ([a-j]{4})=", p)
    if m: return m.group(1)[::-1]
    m = re.fullmatch(r"(\d\d)\+(\d\d)=", p)
    if m: return str(int(m.group(1)) + int(m.group(2)))
    m = re.fullmatch(r"count a ([abc]{10})=", p)
    if m: return str(m.group(1).count("a"))
    m = re.fullmatch(r"dsum (\d{4})=", p)
    if m: return str(sum(map(int, m.group(1))))
    raise AssertionError(f"unknown prompt {p!r}")
for t in ["sort", "reverse", "add", "count", "digitsum"]:
    rows = [json.loads(l) for l in open(f"{d}/{t}/prompts.jsonl")]
    sft = [json.loads(l) for l in open(f"{d}/{t}/sft.jsonl")]
    pairs = [json.loads(l) for l in open(f"{d}/{t}/pairs.jsonl")]
    assert len(rows) == len(sft) == 400 and len({r["prompt"] for r in rows}) == 400, t
    for r, s in zip(rows, sft):
        assert r["answer"] == truth(r["prompt"]) == s["completion"] and r["prompt"] == s["prompt"], (t, r, s)
    assert len(pairs) >= 400, (t, len(pairs))
    for p in pairs:
        assert p["chosen"] == truth(p["prompt"]) != p["rejected"], (t, p)
    print(t, "ok:", len(rows), "prompts,", len(pairs), "pairs")
PY
