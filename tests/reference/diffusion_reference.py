"""Independent PyTorch (float64) computation of the block-diffusion objective on [x_t ; x_0].

Reads from DIR: config.json, params.json ([[name, shape], ...] in file order), params.bin (f32),
tokens.bin (i32 [batch, 2n]: x_t then x_0), targets.bin (i32 [batch, 2n], -1 ignored),
weights.bin (f32 [batch, 2n]), meta.json ({"n", "block", "scale"}).
The attention mask is built densely from the BD3-LM rule (noisy block: itself and earlier clean
blocks; clean block: clean blocks up to itself); both halves use positions 0..n-1.
Writes loss.txt (sum of weight * CE) and grads.bin (f32, d(scale * loss)/d(param), file order).
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_reference import load_params  # noqa: E402


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope(x, positions, theta):  # x [b, s, h, d], positions [s]
    d = x.shape[3]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]
    return x * torch.cos(angles) + rotate_half(x) * torch.sin(angles)


def block_diffusion_mask(n, block):
    allowed = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for q in range(2 * n):
        q_noisy, qb = q < n, (q % n) // block
        for k in range(2 * n):
            k_noisy, kb = k < n, (k % n) // block
            if q_noisy:
                allowed[q, k] = (k_noisy and kb == qb) or (not k_noisy and kb < qb)
            else:
                allowed[q, k] = (not k_noisy) and kb <= qb
    return allowed


def main(directory):
    cfg = json.load(open(f"{directory}/config.json"))
    meta = json.load(open(f"{directory}/meta.json"))
    n, block, scale = meta["n"], meta["block"], meta["scale"]
    specs, params = load_params(directory)
    tokens = torch.tensor(np.fromfile(f"{directory}/tokens.bin", dtype=np.int32), dtype=torch.long)
    batch = tokens.numel() // (2 * n)
    tokens = tokens.view(batch, 2 * n)
    targets = torch.tensor(np.fromfile(f"{directory}/targets.bin", dtype=np.int32), dtype=torch.long)
    weights = torch.tensor(np.fromfile(f"{directory}/weights.bin", dtype=np.float32), dtype=torch.float64)

    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    heads, kv_heads, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    positions = torch.arange(2 * n) % n
    allowed = block_diffusion_mask(n, block)
    seq = 2 * n
    x = params["model.embed_tokens.weight"][tokens]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        a_in = rmsnorm(x, params[p + "input_layernorm.weight"], eps)
        q = (a_in @ params[p + "self_attn.q_proj.weight"].T).view(batch, seq, heads, d)
        k = (a_in @ params[p + "self_attn.k_proj.weight"].T).view(batch, seq, kv_heads, d)
        v = (a_in @ params[p + "self_attn.v_proj.weight"].T).view(batch, seq, kv_heads, d)
        q, k = rope(q, positions, theta), rope(k, positions, theta)
        group = heads // kv_heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        o = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, heads * d)
        x = x + o @ params[p + "self_attn.o_proj.weight"].T
        m_in = rmsnorm(x, params[p + "post_attention_layernorm.weight"], eps)
        gate = m_in @ params[p + "mlp.gate_proj.weight"].T
        up = m_in @ params[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ params[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, params["model.norm.weight"], eps)
    head = params["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    logits = (x @ head.T).reshape(batch * seq, -1)
    per_row = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1, reduction="none")
    loss = (per_row * weights).sum()
    (loss * scale).backward()
    open(f"{directory}/loss.txt", "w").write(f"{loss.item():.17g}\n")
    np.concatenate([params[name].grad.numpy().reshape(-1) for name, _ in specs]).astype(
        np.float32).tofile(f"{directory}/grads.bin")


if __name__ == "__main__":
    main(sys.argv[1])
