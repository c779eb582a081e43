"""Writes one small verifiable task of the recipe suite (scripts/recipe_suite.sh) in the layout of
examples/arithmetic.py --op max: sft.jsonl (prompt / completion), prompts.jsonl (prompt / answer), pairs.jsonl
(two per prompt: the answer against a wrong one of a kind a small model gives) and corpus.txt (for the
tokenizer). Every stage splits the prompts by a hash of their text (data.heldout_fraction), so no stage
trains on the held-out prompts. Answers are 1 to 5 characters; prompts at most 18.

Tasks (none of them is max(a,b), the task the recipes were first tuned on):
  sort      "sort dbca=" -> "abcd"          ordering: four letters of a-h in alphabetical order
  reverse   "rev dbca=" -> "acbd"           string transformation: four letters of a-j reversed
  add       "47+85=" -> "132"               arithmetic with carries: two 2-digit numbers
  count     "count a bacabbacca=" -> "4"     counting: how often "a" occurs in 10 letters of a-c
  digitsum  "dsum 4739=" -> "23"            multi-step arithmetic: the sum of four digits

Usage: tasks.py OUT_DIR --task NAME [--seed 0] [--max 9900]"""
import argparse
import itertools
import json
import os
import random

TASKS = ["sort", "reverse", "add", "count", "digitsum"]


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def letters_wrong(r, answer, alphabet):
    """Wrong strings of the kinds a small model gives: two letters swapped, one letter changed, the input."""
    s = list(answer)
    i, j = r.sample(range(len(s)), 2)
    swapped = s[:]
    swapped[i], swapped[j] = swapped[j], swapped[i]
    changed = s[:]
    changed[r.randrange(len(s))] = r.choice(alphabet)
    return ["".join(swapped), "".join(changed), "".join(r.sample(s, len(s)))]


def number_wrong(r, answer):
    """Wrong numbers of the kinds a small model gives: off by one or ten, digits swapped, a near number."""
    n = int(answer)
    c = [n + 1, max(0, n - 1), n + 10, max(0, n - 10), int(answer[::-1]), max(0, n + r.randint(-5, 5))]
    return [str(x) for x in c]


def examples(task, r):
    """All (prompt, answer, wrong answers) of the task, shuffled."""
    rows = []
    if task == "sort":
        alphabet = "abcdefgh"
        for t in itertools.product(alphabet, repeat=4):
            w = "".join(t)
            a = "".join(sorted(w))
            rows.append((f"sort {w}=", a, letters_wrong(r, a, alphabet) + [w]))
    elif task == "reverse":
        alphabet = "abcdefghij"
        for t in itertools.product(alphabet, repeat=4):
            w = "".join(t)
            if len(set(w)) < 2:
                continue
            a = w[::-1]
            rows.append((f"rev {w}=", a, letters_wrong(r, a, alphabet) + [w]))
    elif task == "add":
        for x in range(10, 100):
            for y in range(10, 100):
                a = str(x + y)
                rows.append((f"{x}+{y}=", a, number_wrong(r, a) + [str(x + y - 10 * ((x % 10 + y % 10) >= 10))]))
    elif task == "count":
        seen = set()
        while len(seen) < 9900:
            seen.add("".join(r.choice("abc") for _ in range(10)))
        for w in sorted(seen):
            a = str(w.count("a"))
            rows.append((f"count a {w}=", a, number_wrong(r, a)))
    elif task == "digitsum":
        for n in range(10000):
            d = f"{n:04d}"
            a = str(sum(int(ch) for ch in d))
            rows.append((f"dsum {d}=", a, number_wrong(r, a)))
    else:
        raise ValueError(task)
    r.shuffle(rows)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--task", choices=TASKS, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max", type=int, default=9900, help="prompts kept (the first of a shuffled order)")
    a = ap.parse_args()
    r = random.Random(a.seed)
    rows = examples(a.task, r)[: a.max]
    os.makedirs(a.out, exist_ok=True)
    write(os.path.join(a.out, "sft.jsonl"), ({"prompt": q, "completion": ans} for q, ans, _ in rows))
    write(os.path.join(a.out, "prompts.jsonl"), ({"prompt": q, "answer": ans} for q, ans, _ in rows))
    pairs = []
    for q, ans, wrong in rows:
        cands = sorted(set(w for w in wrong if w != ans))
        for w in r.sample(cands, min(2, len(cands))):
            pairs.append({"prompt": q, "chosen": ans, "rejected": w})
    write(os.path.join(a.out, "pairs.jsonl"), pairs)
    with open(os.path.join(a.out, "corpus.txt"), "w") as f:
        for q, ans, _ in rows:
            f.write(f"{q}{ans}\n")


if __name__ == "__main__":
    main()
