#!/usr/bin/python3
"""Independent reference for the HF decoder-only forward pass (Llama / Qwen2 / Qwen3) and a writer of
HF-format checkpoints, for the C++ tests. Uses only Debian's python3-torch (no transformers, no
safetensors package): the safetensors reader/writer below follows the published format.

  hf_reference.py gen --arch qwen2 --out DIR [--dtype bf16] [--tie] [--shards 3] [--seed 0] [...]
  hf_reference.py compare --model DIR --ids 1,2,3 --ours logits.safetensors [--tol 1e-4]
  hf_reference.py check-layout --model DIR     (names, shapes and config keys as transformers writes them)

The forward pass runs in float64 on the checkpoint's weights, following the modeling code of
transformers (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM).
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2), "F64": (torch.float64, 8)}
NAMES = {v[0]: k for k, v in DTYPES.items()}


# ----------------------------------------------------------------------------------------------- files
def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, size = DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        buf = bytearray(data[b:e])
        t = torch.frombuffer(buf, dtype=dtype) if e > b else torch.zeros(0, dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out, header.get("__metadata__", {})


def write_safetensors(path, tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, t in tensors.items():
        t = t.contiguous()
        b = t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_model_tensors(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for name in files:
        t, _ = read_safetensors(os.path.join(folder, name))
        tensors.update(t)
    return tensors


# ----------------------------------------------------------------------------------------------- model
def rope_inv_freq(cfg, head_dim):
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":
            factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            lo_wl, hi_wl = old / lo, old / hi
            wl = 2 * math.pi / inv
            scaled = torch.where(wl > lo_wl, inv / factor, inv)
            smooth = (old / wl - lo) / (hi - lo)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wl < hi_wl) * ~(wl > lo_wl)
            inv = torch.where(medium, smoothed, scaled)
        elif kind not in (None, "default"):
            raise SystemExit(f"reference: rope type {kind} not implemented")
    return inv


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rot(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def forward(folder, ids):
    """Logits [T, V] (float64) of one sequence."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    W = {k: v.double() for k, v in load_model_tensors(folder).items()}
    mt = cfg["model_type"]
    H, K = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    C = cfg["hidden_size"]
    D = cfg.get("head_dim") or C // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(ids)

    def lin(x, name, bias_ok=True):
        y = x @ W[name + ".weight"].T
        if bias_ok and (name + ".bias") in W:
            y = y + W[name + ".bias"]
        return y

    inv = rope_inv_freq(cfg, D).double()
    pos = torch.arange(T, dtype=torch.float64)
    freqs = pos[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()
    causal = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)

    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(T, H, D)
        k = lin(h, p + "self_attn.k_proj").view(T, K, D)
        v = lin(h, p + "self_attn.v_proj").view(T, K, D)
        if mt == "qwen3":
            q = rms(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [N, T, D]
        q = q * cos + rot(q) * sin
        k = k * cos + rot(k) * sin
        k = k.repeat_interleave(H // K, 0)
        v = v.repeat_interleave(H // K, 0)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + causal, -1) @ v  # [H, T, D]
        x = x + lin(a.transpose(0, 1).reshape(T, H * D), p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"]) if not cfg.get("tie_word_embeddings") else W["model.embed_tokens.weight"]
    return x @ head.T


# ----------------------------------------------------------------------------------------------- writer
def gen(args):
    torch.manual_seed(args.seed)
    arch = args.arch
    C, H, K, F, V, L = args.hidden_size, args.heads, args.kv_heads, args.intermediate_size, args.vocab_size, args.layers
    D = args.head_dim or C // H
    prefix = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[arch]
    cfg = {
        "architectures": [prefix + "ForCausalLM"],
        "model_type": arch,
        "hidden_size": C,
        "intermediate_size": F,
        "num_hidden_layers": L,
        "num_attention_heads": H,
        "num_key_value_heads": K,
        "vocab_size": V,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5 if arch == "llama" else 1e-6,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": args.tie,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[args.dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "use_cache": True,
        "transformers_version": "4.51.3",
    }
    if args.head_dim:
        cfg["head_dim"] = D
    if arch == "llama":
        cfg.update({"attention_bias": args.bias, "mlp_bias": False, "pretraining_tp": 1, "rope_scaling": None})
        if args.llama3_rope:
            cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    elif arch == "qwen2":
        cfg.update({"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": L})
    else:
        cfg.update({"attention_bias": args.bias, "head_dim": D, "use_sliding_window": False, "sliding_window": None,
                    "max_window_layers": L})
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    # Scaled so that logits are O(1) and differences are meaningful.
    def w(*shape, std=0.2):
        return (torch.randn(*shape, dtype=torch.float64) * std).to(dt)

    T = {"model.embed_tokens.weight": w(V, C, std=1.0)}
    qkv_bias = arch == "qwen2" or args.bias
    for l in range(L):
        p = f"model.layers.{l}."
        T[p + "input_layernorm.weight"] = (1 + w(C, std=0.1).double()).to(dt)
        T[p + "self_attn.q_proj.weight"] = w(H * D, C)
        T[p + "self_attn.k_proj.weight"] = w(K * D, C)
        T[p + "self_attn.v_proj.weight"] = w(K * D, C)
        T[p + "self_attn.o_proj.weight"] = w(C, H * D)
        if qkv_bias:
            T[p + "self_attn.q_proj.bias"] = w(H * D)
            T[p + "self_attn.k_proj.bias"] = w(K * D)
            T[p + "self_attn.v_proj.bias"] = w(K * D)
        if args.bias and arch != "qwen2":
            T[p + "self_attn.o_proj.bias"] = w(C)
        if arch == "qwen3":
            T[p + "self_attn.q_norm.weight"] = (1 + w(D, std=0.1).double()).to(dt)
            T[p + "self_attn.k_norm.weight"] = (1 + w(D, std=0.1).double()).to(dt)
        T[p + "post_attention_layernorm.weight"] = (1 + w(C, std=0.1).double()).to(dt)
        T[p + "mlp.gate_proj.weight"] = w(F, C)
        T[p + "mlp.up_proj.weight"] = w(F, C)
        T[p + "mlp.down_proj.weight"] = w(C, F)
    T["model.norm.weight"] = (1 + w(C, std=0.1).double()).to(dt)
    if not args.tie:
        T["lm_head.weight"] = w(V, C)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    names = list(T.keys())
    if args.shards <= 1:
        write_safetensors(os.path.join(args.out, "model.safetensors"), T, {"format": "pt"})
    else:
        per = math.ceil(len(names) / args.shards)
        weight_map, total = {}, 0
        for s in range(args.shards):
            fname = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
            part = {n: T[n] for n in names[s * per : (s + 1) * per]}
            write_safetensors(os.path.join(args.out, fname), part, {"format": "pt"})
            for n, t in part.items():
                weight_map[n] = fname
                total += t.numel() * t.element_size()
        with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def compare(args):
    ids = [int(x) for x in args.ids.split(",")]
    ref = forward(args.model, ids)
    ours, _ = read_safetensors(args.ours)
    got = ours["logits"].double()
    if got.shape != ref.shape:
        print(f"shape mismatch: ours {list(got.shape)} reference {list(ref.shape)}")
        return 1
    err = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    print(f"max abs diff {err:.3e} (logit scale {scale:.2f}, tolerance {args.tol:.1e})")
    return 0 if err <= args.tol else 1


def check_layout(args):
    """What transformers needs to load a folder unchanged: config keys, tensor names and shapes."""
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    problems = []
    for key in ["architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "vocab_size", "rms_norm_eps", "rope_theta",
                "tie_word_embeddings", "torch_dtype", "hidden_act", "max_position_embeddings"]:
        if key not in cfg:
            problems.append(f"config.json lacks {key}")
    arch = cfg["architectures"][0]
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    K, D = cfg["num_key_value_heads"], cfg.get("head_dim") or C // H
    V, F = cfg["vocab_size"], cfg["intermediate_size"]
    tensors = load_model_tensors(args.model)
    metas = []
    index = os.path.join(args.model, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    for name in files:
        _, meta = read_safetensors(os.path.join(args.model, name))
        if meta.get("format") != "pt":
            problems.append(f"{name}: __metadata__.format is {meta.get('format')!r}, transformers wants 'pt'")
    expect = {"model.embed_tokens.weight": [V, C], "model.norm.weight": [C]}
    mt = cfg["model_type"]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        expect.update({p + "input_layernorm.weight": [C], p + "post_attention_layernorm.weight": [C],
                       p + "self_attn.q_proj.weight": [H * D, C], p + "self_attn.k_proj.weight": [K * D, C],
                       p + "self_attn.v_proj.weight": [K * D, C], p + "self_attn.o_proj.weight": [C, H * D],
                       p + "mlp.gate_proj.weight": [F, C], p + "mlp.up_proj.weight": [F, C],
                       p + "mlp.down_proj.weight": [C, F]})
        if mt == "qwen2" or cfg.get("attention_bias"):
            expect.update({p + "self_attn.q_proj.bias": [H * D], p + "self_attn.k_proj.bias": [K * D],
                           p + "self_attn.v_proj.bias": [K * D]})
        if mt != "qwen2" and cfg.get("attention_bias"):
            expect[p + "self_attn.o_proj.bias"] = [C]
        if mt == "qwen3":
            expect.update({p + "self_attn.q_norm.weight": [D], p + "self_attn.k_norm.weight": [D]})
    if arch.endswith("ForCausalLM") and not cfg["tie_word_embeddings"]:
        expect["lm_head.weight"] = [V, C]
    if arch.endswith("ForSequenceClassification"):
        expect["score.weight"] = [len(cfg.get("id2label", {"0": 0})), C]
    if arch.endswith("ForTokenClassification"):
        expect["score.weight"] = [1, C]
        expect["score.bias"] = [1]
    for n, shape in expect.items():
        if n not in tensors:
            problems.append(f"missing tensor {n}")
        elif list(tensors[n].shape) != shape:
            problems.append(f"{n}: shape {list(tensors[n].shape)} != {shape}")
    for n in tensors:
        if n not in expect:
            problems.append(f"unexpected tensor {n}")
    want = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg["torch_dtype"]]
    for n, t in tensors.items():
        if t.dtype != want:
            problems.append(f"{n}: dtype {t.dtype} but torch_dtype {cfg['torch_dtype']}")
            break
    for p in problems:
        print(p)
    print(f"{len(expect)} tensors checked, {len(problems)} problems")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--arch", required=True, choices=["llama", "qwen2", "qwen3"])
    g.add_argument("--out", required=True)
    g.add_argument("--hidden-size", type=int, default=64)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--intermediate-size", type=int, default=96)
    g.add_argument("--vocab-size", type=int, default=120)
    g.add_argument("--head-dim", type=int, default=0)
    g.add_argument("--rope-theta", type=float, default=10000.0)
    g.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    g.add_argument("--tie", action="store_true")
    g.add_argument("--bias", action="store_true")
    g.add_argument("--llama3-rope", action="store_true")
    g.add_argument("--shards", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--ids", required=True)
    c.add_argument("--ours", required=True)
    c.add_argument("--tol", type=float, default=1e-4)
    k = sub.add_parser("check-layout")
    k.add_argument("--model", required=True)
    a = ap.parse_args()
    if a.cmd == "gen":
        gen(a)
        return 0
    if a.cmd == "compare":
        return compare(a)
    return check_layout(a)


if __name__ == "__main__":
    sys.exit(main())
