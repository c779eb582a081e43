"""Writes the arithmetic task of the examples: prompts "a+b=" with the sum as completion (SFT), pairs of the
right sum and one 20-40 off (reward model / DPO), held-out prompts with answers (evaluation), and a corpus for
the tokenizer. Usage: arithmetic.py OUT_DIR [--n 3000] [--seed 0]"""
import argparse
import json
import os
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.n + 200 > 100 * 100:
        ap.error("--n is larger than the number of distinct prompts (9800)")
    r = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    seen = set()
    rows = []
    while len(rows) < a.n + 200:
        x, y = r.randint(0, 99), r.randint(0, 99)
        if (x, y) in seen:
            continue
        seen.add((x, y))
        rows.append((x, y))
    train, test = rows[:a.n], rows[a.n:]
    with open(os.path.join(a.out, "sft.jsonl"), "w") as f:
        for x, y in train:
            f.write(json.dumps({"prompt": f"{x}+{y}=", "completion": str(x + y)}) + "\n")
    with open(os.path.join(a.out, "pairs.jsonl"), "w") as f:
        for x, y in train:
            wrong = max(0, x + y + r.choice([-40, -30, -20, 20, 30, 40]))
            f.write(json.dumps({"prompt": f"{x}+{y}=", "chosen": str(x + y), "rejected": str(wrong)}) + "\n")
    with open(os.path.join(a.out, "eval.jsonl"), "w") as f:
        for x, y in test:
            f.write(json.dumps({"prompt": f"{x}+{y}=", "answer": str(x + y)}) + "\n")
    with open(os.path.join(a.out, "corpus.txt"), "w") as f:
        for x, y in rows:
            f.write(f"{x}+{y}={x + y}\n")


if __name__ == "__main__":
    main()
