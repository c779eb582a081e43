#!/usr/bin/python3
"""Golden values for trainer/algo, computed independently in float64 with python3-torch (1.13), following
../shared/ALGORITHMS.md and the open implementations it cites (TRL, OpenRLHF, verl).

  algo_golden.py OUT.json      writes the cases; tests/golden/algo_golden.json is this script's output and
                               the test suite checks that rerunning it gives the same file.

Each case: {"fn": name, "options": {...}, "inputs": {...}, "outputs": {...}}; gradients ("grad_*") are
d(loss)/d(input) from autograd on this reference implementation.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
G = torch.Generator().manual_seed(1234)


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=G) * scale


def lst(t):
    return t.tolist() if isinstance(t, torch.Tensor) else t


CASES = []


def case(fn, options, inputs, outputs):
    CASES.append({"fn": fn, "options": options, "inputs": {k: lst(v) for k, v in inputs.items()},
                  "outputs": {k: lst(v) for k, v in outputs.items()}})


# Right-padded response masks of different lengths, and one with an interior gap (multi-turn observation).
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float64)
MASK_GAP = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 0, 1, 1, 0, 0]], dtype=torch.float64)
B, T = MASK.shape


def mmean(x, m):
    return (x * m).sum() / m.sum()


def mvar(x, m, unbiased):
    n = m.sum()
    mu = mmean(x, m)
    v = ((x - mu) ** 2 * m).sum() / n
    return v * n / (n - 1) if unbiased else v


# ----------------------------------------------------------------------------------------------- KL
lp = rnd(B, T)
ref = lp + rnd(B, T, scale=0.7)
ref[0, 0] = lp[0, 0] + 25.0  # beyond the clamp
ref[1, 1] = lp[1, 1] - 30.0
for est in ["k1", "k2", "k3"]:
    for clamp in [False, True]:
        d = ref - lp
        if clamp:
            d = d.clamp(-20, 20)
        kl = {"k1": -d, "k2": 0.5 * d * d, "k3": torch.exp(d) - d - 1}[est]
        if clamp:
            kl = kl.clamp(-10, 10)
        case("kl", {"estimator": est, "clamp": clamp}, {"lp": lp, "ref": ref}, {"kl": kl})

# ----------------------------------------------------------------------------------------------- aggregation
loss = rnd(B, T)
for mode in ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]:
    if mode == "token_mean":
        v = (loss * MASK).sum() / MASK.sum()
    elif mode == "seq_mean_token_mean":
        v = ((loss * MASK).sum(1) / MASK.sum(1)).mean()
    else:
        v = (loss * MASK).sum() / (B * 8)
    case("aggregate", {"mode": mode, "max_len": 8}, {"loss": loss, "mask": MASK}, {"value": v})

x = rnd(B, T, scale=3) + 2
for unbiased in [True, False]:
    for shift in [True, False]:
        w = (x - mmean(x, MASK)) / torch.sqrt(mvar(x, MASK, unbiased) + 1e-8)
        if not shift:
            w = w + mmean(x, MASK)
        case("whiten", {"unbiased": unbiased, "shift_mean": shift}, {"x": x, "mask": MASK}, {"y": w * MASK})

values = rnd(B, T)
returns = values + rnd(B, T, scale=0.5)
ev = 1 - mvar(returns - values, MASK, False) / mvar(returns, MASK, False)
case("explained_variance", {}, {"values": values, "returns": returns, "mask": MASK}, {"ev": ev})

# ----------------------------------------------------------------------------------------------- rewards
score = torch.tensor([1.0, -0.7, 2.5, 0.3])
kl = rnd(B, T, scale=0.2).abs()


def last_index(m):
    return [int(torch.nonzero(row).max()) for row in m]


for beta, clip in [(0.05, 0.0), (0.1, 1.0)]:
    r = -beta * kl * MASK
    s = score.clamp(-clip, clip) if clip > 0 else score
    for b, t in enumerate(last_index(MASK)):
        r[b, t] += s[b]
    case("token_rewards", {"beta": beta, "score_clip": clip}, {"score": score, "kl": kl, "mask": MASK}, {"rewards": r})


def gae_ref(r, v, m, gamma, lam, skip):
    Bn, Tn = r.shape
    adv = torch.zeros(Bn, Tn)
    for b in range(Bn):
        nxt, last = 0.0, 0.0
        for t in reversed(range(Tn)):
            if skip and m[b, t] == 0:
                continue  # carried over
            vt = v[b, t] * m[b, t]
            rt = r[b, t] * m[b, t]
            delta = rt + gamma * nxt - vt
            last = delta + gamma * lam * last
            nxt = vt
            adv[b, t] = last
    adv = adv * m
    return adv, (adv + v * m) * m


rewards = rnd(B, T)
for gamma, lam in [(1.0, 1.0), (0.99, 0.95)]:
    a, ret = gae_ref(rewards, values, MASK, gamma, lam, False)
    case("gae", {"gamma": gamma, "lambda": lam, "masked": "zero"}, {"rewards": rewards, "values": values, "mask": MASK},
         {"advantages": a, "returns": ret})
rg, vg = rnd(2, T), rnd(2, T)
a, ret = gae_ref(rg, vg, MASK_GAP, 0.99, 0.95, True)
case("gae", {"gamma": 0.99, "lambda": 0.95, "masked": "skip"}, {"rewards": rg, "values": vg, "mask": MASK_GAP},
     {"advantages": a, "returns": ret})

scores8 = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 2.0])
for g in [4, 2, 1]:
    r = scores8.view(-1, g)
    for kind in ["grpo", "dr_grpo", "rloo"]:
        if g == 1 and kind != "dr_grpo":
            a = torch.zeros_like(r)
        elif kind == "grpo":
            a = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)
        elif kind == "dr_grpo":
            a = r - r.mean(1, keepdim=True)
        else:
            a = torch.stack([torch.stack([r[i, j] - (r[i].sum() - r[i, j]) / (g - 1) for j in range(g)]) for i in range(r.shape[0])])
        case("group_advantages", {"group_size": g, "kind": kind, "eps": 1e-6}, {"scores": scores8}, {"advantages": a.reshape(-1)})

for gamma, group in [(1.0, 0), (0.97, 2)]:
    s = score.clone()
    if group:
        s = (s.view(-1, group) - s.view(-1, group).mean(1, keepdim=True)).reshape(-1)
    r = -0.05 * kl * MASK
    for b, t in enumerate(last_index(MASK)):
        r[b, t] += s[b]
    ret = torch.zeros(B, T)
    for b in range(B):
        run = 0.0
        for t in reversed(range(T)):
            run = r[b, t] * MASK[b, t] + gamma * run
            ret[b, t] = run
    ret = ret * MASK
    adv = (ret - mmean(ret, MASK)) / torch.sqrt(mvar(ret, MASK, True) + 1e-8) * MASK
    case("reinforce_pp", {"beta": 0.05, "gamma": gamma, "group_size": group}, {"scores": score, "kl": kl, "mask": MASK},
         {"advantages": adv})

step_rewards = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
step_ends = torch.tensor([[1, 3, 5], [0, 2, -1], [2, 4, -1], [0, -1, -1]], dtype=torch.float64)
adv = torch.zeros(B, T)
for grp in range(2):
    rows = [2 * grp, 2 * grp + 1]
    vals = [step_rewards[i, j] for i in rows for j in range(3) if step_ends[i, j] >= 0]
    v = torch.stack(vals)
    mu, sd = v.mean(), v.std()
    for i in rows:
        for j in range(3):
            e = int(step_ends[i, j])
            if e < 0:
                continue
            nr = (step_rewards[i, j] - mu) / (sd + 1e-6)
            for t in range(0, e + 1):
                adv[i, t] += nr
adv = adv * MASK
case("process_advantages", {"group_size": 2, "eps": 1e-6},
     {"step_rewards": step_rewards, "step_ends": step_ends, "mask": MASK}, {"advantages": adv})

case("groups_with_signal", {"group_size": 2}, {"scores": scores8},
     {"keep": [float(scores8[i] != scores8[i + 1]) for i in range(0, 8, 2)]})
lengths = torch.tensor([10.0, 80.0, 96.0, 100.0, 128.0, 129.0])
pen = []
for L in lengths.tolist():
    if L <= 128 - 32:
        pen.append(0.0)
    elif L <= 128:
        pen.append(((128 - 32) - L) / 32)
    else:
        pen.append(-1.0)
case("overlong_penalty", {"max_len": 128, "cache_len": 32}, {"lengths": lengths}, {"penalty": pen})

batches = [rnd(5, scale=2) + 1, rnd(3, scale=0.5) - 1, rnd(8)]
allx = torch.cat(batches)
case("running_mean_std", {"clip": 1.5}, {"b0": batches[0], "b1": batches[1], "b2": batches[2], "x": allx[:4]},
     {"mean": allx.mean(), "var": allx.var(unbiased=False), "count": float(allx.numel()),
      "normalized": ((allx[:4] - allx.mean()) / torch.sqrt(allx.var(unbiased=False) + 1e-8)).clamp(-1.5, 1.5)})

# ----------------------------------------------------------------------------------------------- PPO
old = rnd(B, T, scale=0.5) - 1.0
lp0 = old + rnd(B, T, scale=0.3)
behaviour = old + rnd(B, T, scale=0.4)
adv = rnd(B, T)


def aggregate(l, m, mode, max_len=T):
    if mode == "token_mean":
        return (l * m).sum() / m.sum()
    if mode == "seq_mean_token_mean":
        return ((l * m).sum(1) / m.sum(1).clamp(min=1)).sum() / m.shape[0]
    return (l * m).sum() / (m.shape[0] * max_len)


def policy_ref(lp, opts):
    lr = lp - old
    if opts["ratio_level"] == "sequence":
        s = (lr * MASK).sum(1, keepdim=True) / MASK.sum(1, keepdim=True)
        lr = lp - lp.detach() + s.detach()
    lr = lr.clamp(-20, 20)
    ratio = torch.exp(lr)
    l1 = -adv * ratio
    l2 = -adv * ratio.clamp(1 - opts["eps_low"], 1 + opts["eps_high"])
    pg = torch.maximum(l1, l2)
    clipped = (l2 > l1).double()
    if opts["dual_clip"] > 1:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * opts["dual_clip"]), pg)
    if opts["tis_cap"] > 0:
        pg = pg * torch.exp(old - behaviour).clamp(max=opts["tis_cap"])
    loss = aggregate(pg, MASK, opts["agg"])
    return loss, mmean(clipped, MASK), mmean(ratio.detach() - 1 - lr.detach(), MASK), mmean(ratio.detach(), MASK)


for opts in [
    {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": 0, "ratio_level": "token", "tis_cap": 0, "agg": "token_mean"},
    {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": 0, "ratio_level": "token", "tis_cap": 0, "agg": "token_mean"},
    {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": 3.0, "ratio_level": "token", "tis_cap": 0, "agg": "seq_mean_token_mean"},
    {"eps_low": 0.0003, "eps_high": 0.0004, "dual_clip": 0, "ratio_level": "sequence", "tis_cap": 0, "agg": "seq_mean_token_mean"},
    {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": 0, "ratio_level": "token", "tis_cap": 2.0, "agg": "seq_mean_token_sum_norm"},
    {"eps_low": 0.1, "eps_high": 0.1, "dual_clip": 1.5, "ratio_level": "token", "tis_cap": 0, "agg": "token_mean"},
]:
    lp = lp0.clone().requires_grad_(True)
    loss_v, cf, akl, rm = policy_ref(lp, opts)
    loss_v.backward()
    case("policy_loss", opts, {"lp": lp0, "old": old, "advantages": adv, "mask": MASK, "behaviour": behaviour},
         {"loss": loss_v.detach(), "clip_fraction": cf, "approx_kl": akl, "ratio_mean": rm, "grad_lp": lp.grad})

V_old = rnd(B, T)
V0 = V_old + rnd(B, T, scale=0.3)
R = V_old + rnd(B, T)
A_unwhitened = R - V_old
A_other = rnd(B, T)
for mode, adv_in in [("none", A_unwhitened), ("ppo", A_unwhitened), ("study_notes", A_unwhitened), ("study_notes", A_other)]:
    V = V0.clone().requires_grad_(True)
    plain = (V - R) ** 2
    if mode == "none":
        vf, csq = 0.5 * plain, None
    elif mode == "ppo":
        csq = (V_old + (V - V_old).clamp(-0.2, 0.2) - R) ** 2
        vf = 0.5 * torch.maximum(plain, csq)
    else:
        csq = torch.clamp(R - V, adv_in - 0.2, adv_in + 0.2) ** 2  # torch.clamp with tensor bounds (1.13)
        vf = 0.5 * torch.maximum(plain, csq)
    l = aggregate(vf, MASK, "token_mean")
    l.backward()
    cfrac = mmean((csq > plain).double(), MASK) if csq is not None else torch.tensor(0.0)
    case("value_loss", {"clip": mode, "vclip": 0.2, "agg": "token_mean"},
         {"values": V0, "old_values": V_old, "returns": R, "mask": MASK, "advantages": adv_in},
         {"loss": l.detach(), "clip_fraction": cfrac, "explained_variance": 1 - mvar(R - V0, MASK, False) / mvar(R, MASK, False),
          "grad_values": V.grad})

lp = lp0.clone().requires_grad_(True)
refk = old + rnd(B, T, scale=0.2)
d = refk - lp
klv = 0.04 * aggregate(torch.exp(d) - d - 1, MASK, "token_mean")
klv.backward()
case("kl_loss", {"beta": 0.04, "estimator": "k3", "agg": "token_mean"}, {"lp": lp0, "ref": refk, "mask": MASK},
     {"loss": klv.detach(), "grad_lp": lp.grad})
ent = rnd(B, T).abs()
case("entropy_bonus", {"coef": 0.01, "agg": "seq_mean_token_mean"}, {"entropy": ent, "mask": MASK},
     {"loss": -0.01 * aggregate(ent, MASK, "seq_mean_token_mean")})

# ----------------------------------------------------------------------------------------------- preferences
N = 5
lp_c0, lp_r0 = rnd(N) - 20, rnd(N) - 22
ref_c, ref_r = lp_c0 + rnd(N, scale=0.5), lp_r0 + rnd(N, scale=0.5)
len_c, len_r = torch.tensor([10.0, 12, 7, 20, 3]), torch.tensor([11.0, 9, 7, 15, 4])


def pref_metrics(rc, rr):
    return {"rewards_chosen": rc.detach(), "rewards_rejected": rr.detach(),
            "accuracy": (rc > rr).double().mean(), "margin": (rc - rr).detach().mean()}


for typ, beta, ls, norm in [("sigmoid", 0.1, 0.0, True), ("sigmoid", 0.1, 0.1, True), ("ipo", 0.1, 0.0, True),
                            ("ipo", 0.5, 0.0, False), ("hinge", 0.1, 0.0, True), ("robust", 0.1, 0.1, True)]:
    lc, lr = lp_c0.clone().requires_grad_(True), lp_r0.clone().requires_grad_(True)
    dc, dr = lc - ref_c, lr - ref_r
    D = dc - dr
    if typ == "sigmoid":
        losses = -(1 - ls) * F.logsigmoid(beta * D) - ls * F.logsigmoid(-beta * D)
    elif typ == "ipo":
        x = dc / len_c - dr / len_r if norm else D
        losses = (x - 1 / (2 * beta)) ** 2
    elif typ == "hinge":
        losses = torch.relu(1 - beta * D)
    else:
        losses = (-(1 - ls) * F.logsigmoid(beta * D) + ls * F.logsigmoid(-beta * D)) / (1 - 2 * ls)
    l = losses.mean()
    l.backward()
    out = {"loss": l.detach(), "grad_lp_c": lc.grad, "grad_lp_r": lr.grad}
    out.update(pref_metrics(beta * dc, beta * dr))
    case("dpo", {"type": typ, "beta": beta, "label_smoothing": ls, "ipo_length_normalize": norm},
         {"lp_c": lp_c0, "lp_r": lp_r0, "ref_c": ref_c, "ref_r": ref_r, "len_c": len_c, "len_r": len_r}, out)

kto_lp0 = rnd(6) - 10
kto_ref = kto_lp0 + rnd(6, scale=0.5)
desirable = torch.tensor([1.0, 0, 1, 1, 0, 0])
kl_lp, kl_ref = rnd(6) - 12, rnd(6) - 12.5
for wd, wu in [(1.0, 1.0), (1.0, 1.33)]:
    lp = kto_lp0.clone().requires_grad_(True)
    z0 = (kl_lp - kl_ref).mean().clamp(min=0)
    ratio = lp - kto_ref
    ld = 1 - torch.sigmoid(0.1 * (ratio - z0))
    lu = 1 - torch.sigmoid(0.1 * (z0 - ratio))
    l = torch.where(desirable > 0, wd * ld, wu * lu).mean()
    l.backward()
    rw = (0.1 * ratio).detach()
    mc, mr = rw[desirable > 0].mean(), rw[desirable == 0].mean()
    case("kto", {"beta": 0.1, "desirable_weight": wd, "undesirable_weight": wu},
         {"lp": kto_lp0, "ref": kto_ref, "desirable": desirable, "kl_lp": kl_lp, "kl_ref": kl_ref},
         {"loss": l.detach(), "grad_lp": lp.grad, "margin": mc - mr, "accuracy": float(mc > mr)})

avg_c0, avg_r0 = -torch.rand(N, generator=G) * 2 - 0.05, -torch.rand(N, generator=G) * 2 - 0.05
avg_c0[0] = -1e-4  # close to 0: log1mexp needs the stable branch
nll = rnd(N).abs() + 1
ac, ar = avg_c0.clone().requires_grad_(True), avg_r0.clone().requires_grad_(True)
log_odds = (ac - ar) - (torch.log(-torch.expm1(ac)) - torch.log(-torch.expm1(ar)))
l = nll.mean() - 0.1 * F.logsigmoid(log_odds).mean()
l.backward()
out = {"loss": l.detach(), "grad_avg_c": ac.grad, "grad_avg_r": ar.grad}
out.update(pref_metrics(0.1 * avg_c0, 0.1 * avg_r0))
case("orpo", {"beta": 0.1}, {"avg_c": avg_c0, "avg_r": avg_r0, "nll_chosen": nll}, out)

for beta, gamma, ls in [(2.0, 0.5, 0.0), (2.5, 1.0, 0.1)]:
    ac, ar = avg_c0.clone().requires_grad_(True), avg_r0.clone().requires_grad_(True)
    x = beta * (ac - ar) - gamma
    l = (-(1 - ls) * F.logsigmoid(x) - ls * F.logsigmoid(-x)).mean()
    l.backward()
    out = {"loss": l.detach(), "grad_avg_c": ac.grad, "grad_avg_r": ar.grad}
    out.update(pref_metrics(beta * avg_c0, beta * avg_r0))
    case("simpo", {"beta": beta, "gamma": gamma, "label_smoothing": ls}, {"avg_c": avg_c0, "avg_r": avg_r0}, out)

lc, lr = lp_c0.clone().requires_grad_(True), lp_r0.clone().requires_grad_(True)
x = 0.1 * (lc - lr)
l = (-(1 - 0.05) * F.logsigmoid(x) - 0.05 * F.logsigmoid(-x)).mean() + 1.0 * nll.mean()
l.backward()
out = {"loss": l.detach(), "grad_lp_c": lc.grad, "grad_lp_r": lr.grad}
out.update(pref_metrics(0.1 * lp_c0, 0.1 * lp_r0))
case("cpo", {"beta": 0.1, "alpha": 1.0, "label_smoothing": 0.05}, {"lp_c": lp_c0, "lp_r": lp_r0, "nll_chosen": nll}, out)

p0 = -torch.rand(3, 4, generator=G) * 3
rr = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.2, 0.9, 0.1, 0.3], [1.0, 1.0, 0.0, 2.0]])
nll_best = rnd(3).abs()
p = p0.clone().requires_grad_(True)
rank = 0.0
for b in range(3):
    for i in range(4):
        for j in range(4):
            if rr[b, i] < rr[b, j]:
                rank = rank + torch.relu(p[b, i] - p[b, j])
l = rank / 3 + 0.7 * nll_best.mean()
l.backward()
case("rrhf", {"sft_weight": 0.7}, {"p": p0, "rewards": rr, "nll_best": nll_best}, {"loss": l.detach(), "grad_p": p.grad})

rc0, rr0 = rnd(N), rnd(N)
margin = torch.tensor([0.0, 0.5, 1.0, 0.0, 2.0])
for use_margin, c in [(False, 0.0), (True, 0.01)]:
    a, b = rc0.clone().requires_grad_(True), rr0.clone().requires_grad_(True)
    x = a - b - (margin if use_margin else 0)
    l = -F.logsigmoid(x).mean() + c * ((a + b) ** 2).mean()
    l.backward()
    out = {"loss": l.detach(), "grad_r_c": a.grad, "grad_r_r": b.grad}
    out.update(pref_metrics(rc0, rr0))
    ins = {"r_c": rc0, "r_r": rr0}
    if use_margin:
        ins["margin"] = margin
    case("bradley_terry", {"centering": c}, ins, out)

with open(sys.argv[1], "w") as f:
    json.dump({"generator": "tests/python/algo_golden.py", "torch": torch.__version__, "cases": CASES}, f, indent=1)
print(f"{len(CASES)} cases written to {sys.argv[1]}")
