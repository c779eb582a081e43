"""Reference values for the learner's AdamW and schedule: torch.optim.AdamW (python3-torch) on fixed
parameters and gradients, and transformers' cosine-with-warmup formula. Prints JSON."""
import json
import math
import sys

import torch


def main():
    torch.set_default_dtype(torch.float32)
    w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 12).reshape(3, 4))
    b = torch.nn.Parameter(torch.linspace(0.5, -0.5, 4))  # a bias: no weight decay
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                            lr=0.01, betas=(0.9, 0.95), eps=1e-8)
    for step in range(1, 4):
        w.grad = torch.sin(torch.arange(12, dtype=torch.float32) * step).reshape(3, 4)
        b.grad = torch.cos(torch.arange(4, dtype=torch.float32) * step)
        opt.step()
    # Cosine with warmup as transformers.get_cosine_schedule_with_warmup(num_cycles=0.5) computes it, except
    # that warmup counts the step being taken ((step + 1) / warmup).
    lrs = []
    warmup, total, lr = 3, 10, 1.0
    for s in range(total):
        if s < warmup:
            lrs.append(lr * (s + 1) / warmup)
        else:
            progress = (s - warmup) / max(1, total - warmup)
            lrs.append(lr * 0.5 * (1.0 + math.cos(math.pi * progress)))
    json.dump({"w": w.detach().flatten().tolist(), "b": b.detach().flatten().tolist(), "lrs": lrs}, sys.stdout)


if __name__ == "__main__":
    main()
