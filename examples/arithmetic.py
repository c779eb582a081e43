"""Writes the arithmetic tasks of the examples.

--op add (default): prompts "a+b=" (0 <= a, b < 100) with the sum as completion. Files: sft.jsonl (--n
prompts), pairs.jsonl (the right sum against one 20-40 off), eval.jsonl (200 other prompts with answers),
prompts.jsonl (the --n prompts with answers) and corpus.txt (for the tokenizer).

--op max: prompts "max(a,b)=" (0 <= a != b < 100, all 9900 of them) with the larger number as completion.
Files: sft.jsonl, pairs.jsonl (two per prompt: the larger number against a wrong answer of a kind small
models give), judge.jsonl and constitution.txt (to SFT-train a Yes/No judge on the pairs' answers),
prompts.jsonl (prompt / answer) and corpus.txt. There is no eval.jsonl: every stage splits the prompts by a
hash of their text (data.heldout_fraction), so the held-out prompts of SFT, RL and `rlhf eval` are the same
ones and no stage trains on them.

Usage: arithmetic.py OUT_DIR [--op add|max] [--n 3000] [--seed 0]"""
import argparse
import json
import os
import random


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--op", choices=["add", "max"], default="add")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    if a.op == "max":
        rows = [(x, y) for x in range(100) for y in range(100) if x != y]
        r.shuffle(rows)
        p = [f"max({x},{y})=" for x, y in rows]
        write(os.path.join(a.out, "sft.jsonl"), ({"prompt": q, "completion": str(max(x, y))} for q, (x, y) in zip(p, rows)))
        pairs = []
        for q, (x, y) in zip(p, rows):
            # Two pairs per prompt, each with a different wrong answer of the kinds a small model makes: the
            # smaller number, a number near the larger one (above or below), the digits of the two numbers
            # mixed or swapped, any number. "Bigger is better" does not fit these pairs: a reward model has
            # to read the prompt.
            hi, lo = max(x, y), min(x, y)
            cands = {lo, min(99, hi + r.randint(1, 15)), max(0, hi - r.randint(1, 15)), r.randint(0, 99),
                     (x // 10) * 10 + y % 10, (y // 10) * 10 + x % 10, (hi % 10) * 10 + hi // 10}
            cands.discard(hi)
            for wrong in r.sample(sorted(cands), 2):
                pairs.append({"prompt": q, "chosen": str(hi), "rejected": str(wrong)})
        write(os.path.join(a.out, "pairs.jsonl"), pairs)
        # A judge's training data: the judge template of examples/online_dpo_judge.yaml filled in with the
        # constitution, a prompt and a right or wrong answer, completed by " Yes" or " No".
        rule = "Answer with the larger of the two numbers."
        with open(os.path.join(a.out, "constitution.txt"), "w") as f:
            f.write(rule + "\n")
        judge = []
        for pr in pairs:
            for answer, verdict in ((pr["chosen"], " Yes"), (pr["rejected"], " No")):
                judge.append({"prompt": f"{rule}\n{pr['prompt']}{answer}\nRight?", "completion": verdict})
        r.shuffle(judge)
        write(os.path.join(a.out, "judge.jsonl"), judge)
        write(os.path.join(a.out, "prompts.jsonl"), ({"prompt": q, "answer": str(max(x, y))} for q, (x, y) in zip(p, rows)))
        with open(os.path.join(a.out, "corpus.txt"), "w") as f:
            for q, (x, y) in zip(p, rows):
                f.write(f"{q}{max(x, y)}\n")
        return
    if a.n + 200 > 100 * 100:
        ap.error("--n is larger than the number of distinct prompts (9800)")
    seen = set()
    rows = []
    while len(rows) < a.n + 200:
        x, y = r.randint(0, 99), r.randint(0, 99)
        if (x, y) in seen:
            continue
        seen.add((x, y))
        rows.append((x, y))
    train, test = rows[:a.n], rows[a.n:]
    write(os.path.join(a.out, "sft.jsonl"), ({"prompt": f"{x}+{y}=", "completion": str(x + y)} for x, y in train))
    pairs = []
    for x, y in train:
        wrong = max(0, x + y + r.choice([-40, -30, -20, 20, 30, 40]))
        pairs.append({"prompt": f"{x}+{y}=", "chosen": str(x + y), "rejected": str(wrong)})
    write(os.path.join(a.out, "pairs.jsonl"), pairs)
    write(os.path.join(a.out, "eval.jsonl"), ({"prompt": f"{x}+{y}=", "answer": str(x + y)} for x, y in test))
    write(os.path.join(a.out, "prompts.jsonl"), ({"prompt": f"{x}+{y}=", "answer": str(x + y)} for x, y in train))
    with open(os.path.join(a.out, "corpus.txt"), "w") as f:
        for x, y in rows:
            f.write(f"{x}+{y}={x + y}\n")


if __name__ == "__main__":
    main()
