"""Writes a Hugging Face style model directory by hand (struct + json, no safetensors library):
config.json, two safetensors shards with mixed dtypes, model.safetensors.index.json and a
rotary inv_freq buffer HF checkpoints sometimes carry. Tensor bytes are random, so any
conversion on the way through import/export would show.

With --normal the tensors hold a usable model instead (normal weights, norms near 1, stored
in the same dtypes) and config.json names rope_theta the transformers-5 way, inside
rope_parameters: for logits against a reference forward pass (tests/reference/hf_logits_reference.py).

usage: make_hf_checkpoint.py OUT_DIR MODEL_TYPE [--bad-shape NAME | --drop NAME | --extra NAME |
                                                 --normal]"""
import json
import os
import random
import struct
import sys

out, model_type = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else None
target = sys.argv[4] if len(sys.argv) > 4 else None
os.makedirs(out, exist_ok=True)
h, f, layers, heads, kv, vocab, hd = 16, 24, 2, 4, 2, 40, 4
config = {"architectures": ["X"], "model_type": model_type, "vocab_size": vocab, "hidden_size": h,
          "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": heads,
          "num_key_value_heads": kv, "head_dim": hd, "rms_norm_eps": 1e-6,
          "tie_word_embeddings": model_type == "qwen3", "attention_bias": model_type == "qwen2",
          "torch_dtype": "bfloat16"}
if mode == "--normal":
    config["rope_parameters"] = {"rope_theta": 1000.0, "rope_type": "default"}
    config["rms_norm_eps"] = 1e-5
experts, fe, fs = 3, 8, 12
if model_type == "mixtral":
    config.update({"num_local_experts": experts, "num_experts_per_tok": 2})
if model_type == "qwen2_moe":
    config.update({"num_experts": experts, "num_experts_per_tok": 2, "moe_intermediate_size": fe,
                   "shared_expert_intermediate_size": fs, "norm_topk_prob": False,
                   "decoder_sparse_step": 1})
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)

shapes = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h]}
for l in range(layers):
    p = f"model.layers.{l}."
    shapes.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                   p + "self_attn.q_proj.weight": [heads * hd, h],
                   p + "self_attn.k_proj.weight": [kv * hd, h],
                   p + "self_attn.v_proj.weight": [kv * hd, h],
                   p + "self_attn.o_proj.weight": [h, heads * hd],
                   p + "self_attn.rotary_emb.inv_freq": [hd // 2]})
    if model_type == "mixtral":  # Mixtral's own names: block_sparse_moe, experts w1/w3/w2
        shapes[p + "block_sparse_moe.gate.weight"] = [experts, h]
        for e in range(experts):
            q = p + f"block_sparse_moe.experts.{e}."
            shapes.update({q + "w1.weight": [f, h], q + "w3.weight": [f, h], q + "w2.weight": [h, f]})
    elif model_type == "qwen2_moe":
        shapes.update({p + "mlp.gate.weight": [experts, h], p + "mlp.shared_expert_gate.weight": [1, h],
                       p + "mlp.shared_expert.gate_proj.weight": [fs, h],
                       p + "mlp.shared_expert.up_proj.weight": [fs, h],
                       p + "mlp.shared_expert.down_proj.weight": [h, fs]})
        for e in range(experts):
            q = p + f"mlp.experts.{e}."
            shapes.update({q + "gate_proj.weight": [fe, h], q + "up_proj.weight": [fe, h],
                           q + "down_proj.weight": [h, fe]})
    else:
        shapes.update({p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
                       p + "mlp.down_proj.weight": [h, f]})
    if model_type == "qwen2":
        shapes.update({p + "self_attn.q_proj.bias": [heads * hd],
                       p + "self_attn.k_proj.bias": [kv * hd],
                       p + "self_attn.v_proj.bias": [kv * hd]})
    if model_type == "qwen3":
        shapes.update({p + "self_attn.q_norm.weight": [hd], p + "self_attn.k_norm.weight": [hd]})
if model_type != "qwen3":
    shapes["lm_head.weight"] = [vocab, h]
if mode == "--bad-shape":
    shapes[target] = [shapes[target][0] + 1] + shapes[target][1:]
elif mode == "--drop":
    del shapes[target]
elif mode == "--extra":
    shapes[target] = [3]

rng = random.Random(7)
sizes = {"F32": 4, "BF16": 2, "F16": 2}


def dtype_of(name):
    if "norm" in name or name.endswith("inv_freq"):
        return "F32"
    return "F16" if "mlp.up_proj" in name else "BF16"


def normal_bytes(name, n, dtype):
    """n values of a usable model: norm weights 1 + N(0, 0.1), the rest N(0, 0.3); bf16 by
    rounding to nearest even (as torch does), f16 by struct's IEEE half."""
    norm = "norm" in name
    values = [(1.0 if norm else 0.0) + rng.gauss(0.0, 0.1 if norm else 0.3) for _ in range(n)]
    if name.endswith("inv_freq"):
        values = [1.0] * n
    if dtype == "F32":
        return struct.pack(f"<{n}f", *values)
    if dtype == "F16":
        return struct.pack(f"<{n}e", *values)
    out = bytearray()
    for bits in struct.unpack(f"<{n}I", struct.pack(f"<{n}f", *values)):
        out += struct.pack("<H", (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)
    return bytes(out)


def write_shard(path, names):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in names:
        n = 1
        for d in shapes[name]:
            n *= d
        dtype = dtype_of(name)
        if mode == "--normal":
            blob = normal_bytes(name, n, dtype)
        else:
            blob = bytes(rng.getrandbits(8) for _ in range(n * sizes[dtype]))
        header[name] = {"dtype": dtype, "shape": shapes[name],
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


names = sorted(shapes)
half = len(names) // 2
files = {"model-00001-of-00002.safetensors": names[:half],
         "model-00002-of-00002.safetensors": names[half:]}
weight_map = {}
for file, part in files.items():
    write_shard(os.path.join(out, file), part)
    weight_map.update({n: file for n in part})
json.dump({"metadata": {}, "weight_map": weight_map},
          open(os.path.join(out, "model.safetensors.index.json"), "w"))
