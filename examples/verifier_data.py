"""Turns samples of a policy, scored by a verifier, into training data for a judge or a reward model of that
policy: the recipe of trained verifiers (a model learns to tell the policy's own right answers from its own
wrong ones, so it is trained on the mistakes it will have to catch).

Input: the JSONL of `rlhf score` (samples with "prompt", "completion" and "reward_parts"), scored with a
rule-based source such as exact_match. Samples of held-out prompts are left out: the split is the one every
stage uses (data.heldout_fraction, data.split_salt), so the held-out evaluation stays clean.

Output, in OUT_DIR:
  judge.jsonl  {"prompt": the judge template filled in, "completion": " Yes" | " No"} per distinct sample; with
               --answers F (prompt/completion JSONL of right answers, e.g. the SFT data), also --answers-repeat
               rows per training prompt of F whose completion is the right answer, the rest of the template and
               " Yes": the judge then also learns to compute the answer it has to check
  pairs.jsonl  {"prompt", "chosen", "rejected"}: every right sample of a prompt against up to --pairs wrong ones

Usage: verifier_data.py SCORED.jsonl OUT_DIR [--part exact_match] [--template "{prompt}{completion}\\nRight?"]
       [--constitution FILE] [--pairs 2] [--answers SFT.jsonl] [--answers-repeat 2] [--heldout-fraction 0.1]
       [--salt rlhf] [--seed 0]"""
import argparse
import collections
import json
import os
import random

MASK = (1 << 64) - 1


def heldout(prompt, fraction, salt):
    # FNV-1a of salt + "\x1f" + prompt, then splitmix64's finaliser (common/data/dataset.cc).
    h = 1469598103934665603
    for c in (salt + "\x1f" + prompt).encode():
        h = ((h ^ c) * 1099511628211) & MASK
    h ^= h >> 30
    h = (h * 0xbf58476d1ce4e5b9) & MASK
    h ^= h >> 27
    h = (h * 0x94d049bb133111eb) & MASK
    h ^= h >> 31
    return (h >> 11) / float(1 << 53) < fraction


def fill(template, values):
    out = template
    for k, v in values.items():
        out = out.replace("{" + k + "}", v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scored")
    ap.add_argument("out")
    ap.add_argument("--part", default="exact_match")
    ap.add_argument("--template", default="{prompt}{completion}\nRight?")
    ap.add_argument("--constitution", default="")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--answers", default="")
    ap.add_argument("--answers-repeat", type=int, default=2)
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    ap.add_argument("--salt", default="rlhf")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = random.Random(a.seed)
    rule = ""
    if a.constitution:
        with open(a.constitution) as f:
            rule = f.read().rstrip("\r\n")
    by_prompt = collections.OrderedDict()
    skipped = 0
    with open(a.scored) as f:
        for line in f:
            s = json.loads(line)
            if not isinstance(s.get("prompt"), str) or a.part not in s.get("reward_parts", {}):
                skipped += 1
                continue
            if heldout(s["prompt"], a.heldout_fraction, a.salt):
                continue
            right = s["reward_parts"][a.part] >= 1.0
            by_prompt.setdefault(s["prompt"], {})[s.get("completion", "")] = right
    judge, pairs = [], []
    for prompt, answers in by_prompt.items():
        for completion, right in answers.items():
            judge.append({"prompt": fill(a.template, {"constitution": rule, "prompt": prompt, "completion": completion}),
                          "completion": " Yes" if right else " No"})
        rights = [c for c, ok in answers.items() if ok]
        wrongs = [c for c, ok in answers.items() if not ok]
        for c in rights:
            for w in r.sample(wrongs, min(a.pairs, len(wrongs))):
                pairs.append({"prompt": prompt, "chosen": c, "rejected": w})
    if a.answers:
        if "{completion}" not in a.template:
            ap.error("--answers needs {completion} in --template")
        with open(a.answers) as f:
            for line in f:
                e = json.loads(line)
                if heldout(e["prompt"], a.heldout_fraction, a.salt):
                    continue
                before, after = fill(a.template, {"constitution": rule, "prompt": e["prompt"]}).split("{completion}", 1)
                for _ in range(a.answers_repeat):
                    judge.append({"prompt": before, "completion": e["completion"] + after + " Yes"})
    r.shuffle(judge)
    r.shuffle(pairs)
    os.makedirs(a.out, exist_ok=True)
    for name, rows in (("judge.jsonl", judge), ("pairs.jsonl", pairs)):
        with open(os.path.join(a.out, name), "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    yes = sum(j["completion"].endswith(" Yes") for j in judge)
    print(f"{len(by_prompt)} training prompts: {len(judge)} judge examples ({yes} Yes, {len(judge) - yes} No), "
          f"{len(pairs)} pairs; {skipped} samples without a prompt or the '{a.part}' part skipped")


if __name__ == "__main__":
    main()
