#!/usr/bin/env python3
"""Model FLOPs per token of a config.json, the MFU convention of the GPU scripts.

6 N per token for the active weights N (embedding and LM head included; an MoE layer counts its
top-k experts and its router), causal attention 6 L s (heads x head_dim) per token. As a script:
model_flops.py CONFIG SEQ prints FLOPs per token and N.
"""
import json
import sys


def expert_count(cfg):
    return cfg.get("num_local_experts", cfg.get("num_experts", 0))


def active_parameters(cfg):
    h, f, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim", h // heads)
    kv = cfg["num_key_value_heads"] * hd
    experts, k = expert_count(cfg), cfg.get("num_experts_per_tok", 1)
    # Qwen-MoE names its expert width moe_intermediate_size and adds a shared expert.
    expert_f = cfg.get("moe_intermediate_size", f)
    shared = 3 * h * cfg.get("shared_expert_intermediate_size", 0)
    mlp = (k * 3 * h * expert_f + h * experts + shared) if experts else 3 * h * f
    return 2 * V * h + L * (2 * h * heads * hd + 2 * h * kv + mlp + 2 * h) + h


def flops_per_token(cfg, seq):
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim", cfg["hidden_size"] // heads)
    return 6 * active_parameters(cfg) + 6 * cfg["num_hidden_layers"] * seq * heads * hd


if __name__ == "__main__":
    config = json.load(open(sys.argv[1]))
    print(flops_per_token(config, int(sys.argv[2])), active_parameters(config))
