"""Exact-match accuracy of generated samples (the JSONL of `rlhf generate`) against their "answer" field:
the completion, without end-of-turn tokens and surrounding space, must equal the answer.
Usage: exact_match.py SAMPLES.jsonl [--show 3]"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("--show", type=int, default=3)
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.samples) if line.strip()]
    def clean(s):
        for t in ("<|im_end|>", "<|endoftext|>"):
            s = s.replace(t, "")
        return s.strip()
    ok = sum(clean(r.get("completion", "")) == str(r["answer"]).strip() for r in rows)
    print(f"exact match {ok}/{len(rows)} = {100.0 * ok / max(1, len(rows)):.1f}%")
    for r in rows[:a.show]:
        print(f"  {r.get('prompt', '')!r} -> {clean(r.get('completion', ''))!r} (answer {r['answer']})")


if __name__ == "__main__":
    main()
