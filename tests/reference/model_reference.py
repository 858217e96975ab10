"""Independent PyTorch (float64) implementation of metamorph's dense decoder, for tests.

Reads from DIR: config.json, params.json ([[name, shape], ...] in file order), params.bin (f32),
tokens.bin / targets.bin (i32 [batch, seq]), scale.txt (gradient scale).
Writes: logits.bin (f32 [batch*seq, vocab]), loss.txt (summed CE, counted tokens),
grads.bin (f32, same order as params.bin) holding d(scale * summed CE)/d(param).
"""
import json
import math
import sys

import numpy as np
import torch

IGNORE = -1


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope(x, theta):  # x [b, s, h, d]
    seq, d = x.shape[1], x.shape[3]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]
    return x * torch.cos(angles) + rotate_half(x) * torch.sin(angles)


def attention(q, k, v):  # [b, s, h, d], k/v [b, s, hk, d]
    b, s, h, d = q.shape
    group = h // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def forward(cfg, params, tokens):
    """Logits [batch*seq, vocab] of the decoder for tokens [batch, seq]."""
    batch, seq = tokens.shape
    eps, d, theta = cfg["rms_norm_eps"], cfg["head_dim"], cfg["rope_theta"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    qk_norm = cfg.get("metamorph", {}).get("qk_norm", False)
    x = params["model.embed_tokens.weight"][tokens]  # [b, s, h]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        a_in = rmsnorm(x, params[p + "input_layernorm.weight"], eps)

        def proj(name):
            y = a_in @ params[p + f"self_attn.{name}_proj.weight"].T
            if cfg["attention_bias"]:
                y = y + params[p + f"self_attn.{name}_proj.bias"]
            return y

        q = proj("q").view(batch, seq, heads, d)
        k = proj("k").view(batch, seq, kv_heads, d)
        v = proj("v").view(batch, seq, kv_heads, d)
        if qk_norm:
            q = rmsnorm(q, params[p + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, params[p + "self_attn.k_norm.weight"], eps)
        o = attention(rope(q, theta), rope(k, theta), v).reshape(batch, seq, heads * d)
        x = x + o @ params[p + "self_attn.o_proj.weight"].T
        m_in = rmsnorm(x, params[p + "post_attention_layernorm.weight"], eps)
        gate = m_in @ params[p + "mlp.gate_proj.weight"].T
        up = m_in @ params[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ params[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, params["model.norm.weight"], eps)
    head = params["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    return (x @ head.T).reshape(batch * seq, -1)


def load_params(directory):
    """params.json ([[name, shape], ...]) and params.bin (f32, in that order) as float64 leaves."""
    specs = json.load(open(f"{directory}/params.json"))
    flat = np.fromfile(f"{directory}/params.bin", dtype=np.float32)
    params, offset = {}, 0
    for name, shape in specs:
        count = int(np.prod(shape))
        params[name] = torch.tensor(flat[offset:offset + count].reshape(shape),
                                    dtype=torch.float64, requires_grad=True)
        offset += count
    return specs, params


def main(directory):
    cfg = json.load(open(f"{directory}/config.json"))
    specs, params = load_params(directory)
    batch, seq = json.load(open(f"{directory}/shape.json"))
    tokens = torch.tensor(np.fromfile(f"{directory}/tokens.bin", dtype=np.int32).reshape(batch, seq),
                          dtype=torch.long)
    targets = torch.tensor(np.fromfile(f"{directory}/targets.bin", dtype=np.int32).reshape(-1),
                           dtype=torch.long)
    scale = float(open(f"{directory}/scale.txt").read())

    logits = forward(cfg, params, tokens)
    loss_sum = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    (loss_sum * scale).backward()

    logits.detach().numpy().astype(np.float32).tofile(f"{directory}/logits.bin")
    counted = int((targets != IGNORE).sum())
    open(f"{directory}/loss.txt", "w").write(f"{loss_sum.item():.17g} {counted}\n")
    np.concatenate([params[name].grad.numpy().reshape(-1) for name, _ in specs]).astype(
        np.float32).tofile(f"{directory}/grads.bin")


if __name__ == "__main__":
    main(sys.argv[1])
