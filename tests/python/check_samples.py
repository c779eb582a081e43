#!/usr/bin/python3
"""Checks a samples JSONL written by `rlhf generate`: the shared sample form, pass-through fields, and
(with --greedy) identical samples within each prompt.  check_samples.py FILE N_PROMPTS N [--greedy]"""
import json
import sys

path, n_prompts, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
greedy = "--greedy" in sys.argv
rows = [json.loads(line) for line in open(path)]
assert len(rows) == n_prompts * n, f"{len(rows)} samples, expected {n_prompts * n}"
need = ["prompt_index", "sample_index", "completion", "completion_ids", "logprobs", "finish_reason", "policy_version",
        "prompt_ids", "seed"]
by_prompt = {}
for r in rows:
    for k in need:
        assert k in r, f"sample lacks {k}: {r}"
    assert len(r["logprobs"]) == len(r["completion_ids"]), "one log-prob per completion token"
    assert all(lp <= 0 for lp in r["logprobs"]), "log-probs are <= 0"
    assert r["finish_reason"] in ("stop", "length")
    assert r["answer"], "pass-through field 'answer' is kept"
    by_prompt.setdefault(r["prompt_index"], []).append(r)
assert sorted(by_prompt) == list(range(n_prompts))
for p, samples in by_prompt.items():
    assert sorted(s["sample_index"] for s in samples) == list(range(n))
    if greedy:
        assert len({tuple(s["completion_ids"]) for s in samples}) == 1, "greedy samples of a prompt are identical"
print(f"{len(rows)} samples OK")
