"""Writes the multi-step arithmetic task: prompts "a+b*c-d=" whose solutions are written one checkable step
per line ("b*c=e", "a+e=f", "f-d=g", then "answer g"), for process supervision with the rule-based step
checker (reward.process_source: checker). Files: sft.jsonl (prompt/completion), prompts.jsonl and eval.jsonl
(prompt/answer, disjoint by construction), corpus.txt for the tokenizer.
Usage: multistep.py OUT_DIR [--n 3000] [--eval 200] [--max-operand 99] [--seed 0]"""
import argparse
import json
import os
import random

OPS = "+-*"


def solve(nums, ops):
    """The steps of evaluating nums[0] ops[0] nums[1] ops[1] nums[2] with * first, then left to right."""
    nums, ops, steps = list(nums), list(ops), []
    while "*" in ops:
        i = ops.index("*")
        v = nums[i] * nums[i + 1]
        steps.append(f"{nums[i]}*{nums[i + 1]}={v}")
        nums[i:i + 2] = [v]
        del ops[i]
    while ops:
        v = nums[0] + nums[1] if ops[0] == "+" else nums[0] - nums[1]
        steps.append(f"{nums[0]}{ops[0]}{nums[1]}={v}")
        nums[0:2] = [v]
        del ops[0]
    return steps, nums[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--max-operand", type=int, default=99, help="operands in [0, N] (factors of a product at most 20)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    seen, rows = set(), []
    while len(rows) < a.n + a.eval:
        ops = [r.choice(OPS), r.choice(OPS)]
        nums = [r.randint(0, min(20, a.max_operand)) if i > 0 and ops[i - 1] == "*" or i < 2 and ops[i] == "*"
                else r.randint(0, a.max_operand) for i in range(3)]
        prompt = f"{nums[0]}{ops[0]}{nums[1]}{ops[1]}{nums[2]}="
        if prompt in seen:
            continue
        seen.add(prompt)
        steps, answer = solve(nums, ops)
        rows.append((prompt, "\n".join(steps) + f"\nanswer {answer}", answer))
    train, test = rows[:a.n], rows[a.n:]
    with open(os.path.join(a.out, "sft.jsonl"), "w") as f:
        for p, c, _ in train:
            f.write(json.dumps({"prompt": p, "completion": c}) + "\n")
    with open(os.path.join(a.out, "prompts.jsonl"), "w") as f:
        for p, _, ans in train:
            f.write(json.dumps({"prompt": p, "answer": str(ans)}) + "\n")
    with open(os.path.join(a.out, "eval.jsonl"), "w") as f:
        for p, _, ans in test:
            f.write(json.dumps({"prompt": p, "answer": str(ans)}) + "\n")
    with open(os.path.join(a.out, "corpus.txt"), "w") as f:
        for p, c, _ in rows:
            f.write(p + c + "\n")


if __name__ == "__main__":
    main()
