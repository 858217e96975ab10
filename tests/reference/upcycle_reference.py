"""Independent float64 PyTorch forward pass of a dense model and of the Mixture-of-Experts model
upcycled from it, read from Hugging Face (Qwen2-MoE named) safetensors files, for the upcycle
tests.

Reads from DIR: dense.safetensors + dense.json, moe.safetensors + moe.json, tokens.bin
(i32 [batch, seq], batch and seq on the command line).
Writes: moe_logits.bin (f32 [batch*seq, vocab]) and deviation.txt,
max |logits_moe - logits_dense| / max |logits_dense|.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grow_reference import read_safetensors  # noqa: E402
from model_reference import attention, rmsnorm, rope  # noqa: E402


def swiglu(x, params, prefix):
    gate = x @ params[prefix + "gate_proj.weight"].T
    up = x @ params[prefix + "up_proj.weight"].T
    return (torch.nn.functional.silu(gate) * up) @ params[prefix + "down_proj.weight"].T


def is_moe_layer(cfg, layer):
    experts = cfg.get("num_experts", 0)
    first_dense = cfg.get("first_k_dense_replace", 0)
    return experts > 0 and layer >= first_dense and (layer + 1) % cfg.get("decoder_sparse_step", 1) == 0


def moe(cfg, x, params, prefix):
    """Every token through its top-k experts, gates from the router; plus the shared expert."""
    extra = cfg.get("metamorph", {})
    scoring = extra.get("router_scoring", "softmax_then_topk")
    k = cfg["num_experts_per_tok"]
    logits = x @ params[prefix + "gate.weight"].T  # [tokens, E]
    if scoring == "sigmoid_bias":
        scores = torch.sigmoid(logits)
        key = scores + params[prefix + "gate.e_score_correction_bias"]
    else:
        scores = torch.softmax(logits, dim=-1)
        key = logits
    chosen = torch.topk(key, k, dim=-1).indices  # [tokens, k]
    gates = scores.gather(-1, chosen)
    if cfg["norm_topk_prob"] or scoring == "topk_then_softmax":
        gates = gates / gates.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(k):
            e = int(chosen[t, j])
            out[t] += gates[t, j] * swiglu(x[t:t + 1], params, f"{prefix}experts.{e}.")[0]
    if cfg.get("shared_expert_intermediate_size", 0) > 0:
        shared = swiglu(x, params, prefix + "shared_expert.")
        if extra.get("shared_expert_gate", False):
            shared = shared * torch.sigmoid(x @ params[prefix + "shared_expert_gate.weight"].T)
        out = out + shared
    return out


def forward(cfg, params, tokens):
    batch, seq = tokens.shape
    eps, d, theta = cfg["rms_norm_eps"], cfg["head_dim"], cfg["rope_theta"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    x = params["model.embed_tokens.weight"][tokens]
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
        o = attention(rope(q, theta), rope(k, theta), v).reshape(batch, seq, heads * d)
        x = x + o @ params[p + "self_attn.o_proj.weight"].T
        m_in = rmsnorm(x, params[p + "post_attention_layernorm.weight"], eps)
        if is_moe_layer(cfg, layer):
            x = x + moe(cfg, m_in.reshape(batch * seq, -1), params, p + "mlp.").view(batch, seq, -1)
        else:
            x = x + swiglu(m_in, params, p + "mlp.")
    x = rmsnorm(x, params["model.norm.weight"], eps)
    head = params["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    return (x @ head.T).reshape(batch * seq, -1)


def main(directory, batch, seq):
    tokens = torch.tensor(np.fromfile(f"{directory}/tokens.bin", dtype=np.int32).reshape(batch, seq),
                          dtype=torch.long)
    out = {}
    for name in ("dense", "moe"):
        cfg = json.load(open(f"{directory}/{name}.json"))
        assert not cfg.get("metamorph", {}).get("qk_norm", False), "qk_norm is not modelled here"
        out[name] = forward(cfg, read_safetensors(f"{directory}/{name}.safetensors"), tokens)
    out["moe"].numpy().astype(np.float32).tofile(f"{directory}/moe_logits.bin")
    deviation = (out["moe"] - out["dense"]).abs().max() / out["dense"].abs().max()
    open(f"{directory}/deviation.txt", "w").write(f"{deviation.item():.6e}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
