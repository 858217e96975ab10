"""Logits of a Hugging Face model directory, computed in float64 PyTorch straight from its files.

Reads config.json and every *.safetensors (parsed by hand: Debian's python3 has torch but no
safetensors or transformers), maps the architecture's tensor names onto the forward passes of
model_reference.py (Llama, Qwen2, Qwen3) and moe_reference.py (Mixtral, Qwen2-MoE), and writes
the logits of the token rows. Nothing of metamorph's importer is used, so a wrong name map,
dtype conversion or config field (rope_theta inside transformers 5's rope_parameters, Qwen3's
q/k norms, Mixtral's router) shows as a logits mismatch against `metamorph logits`.

usage: hf_logits_reference.py HF_DIR TOKENS.npy OUT.npy   (OUT: float32 [batch, seq, vocab])
"""
import glob
import json
import os
import re
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_reference  # noqa: E402
import moe_reference  # noqa: E402


def read_safetensors(path):
    """{name: float64 tensor} of one file."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = blob[8 + header_len:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        raw = data[begin:end]
        if t["dtype"] == "F32":
            values = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif t["dtype"] == "F16":
            values = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif t["dtype"] == "BF16":  # the high half of an f32
            values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view("<f4")
            values = values.astype(np.float64)
        else:
            raise SystemExit(f"{path}: {name}: dtype {t['dtype']} not handled")
        out[name] = torch.tensor(values.reshape(t["shape"]), dtype=torch.float64)
    return out


MIXTRAL_NAMES = [(r"block_sparse_moe\.gate\.", "mlp.gate."),
                 (r"block_sparse_moe\.experts\.(\d+)\.w1\.", r"mlp.experts.\1.gate_proj."),
                 (r"block_sparse_moe\.experts\.(\d+)\.w3\.", r"mlp.experts.\1.up_proj."),
                 (r"block_sparse_moe\.experts\.(\d+)\.w2\.", r"mlp.experts.\1.down_proj.")]


def load(hf_dir):
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    params = {}
    for path in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
        for name, value in read_safetensors(path).items():
            if cfg.get("model_type") == "mixtral":
                for pattern, replacement in MIXTRAL_NAMES:
                    name = re.sub(pattern, replacement, name)
            params[name] = value
    # The fields the reference forward passes read, under the names they read them by.
    cfg.setdefault("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    cfg.setdefault("attention_bias", False)
    cfg.setdefault("tie_word_embeddings", False)
    cfg.setdefault("rms_norm_eps", 1e-6)
    extra = cfg.setdefault("metamorph", {})
    extra.setdefault("qk_norm", cfg.get("model_type", "").startswith("qwen3"))
    if cfg.get("model_type") == "mixtral":
        extra.setdefault("router_scoring", "topk_then_softmax")
    return cfg, params


def main(hf_dir, tokens_path, out_path):
    cfg, params = load(hf_dir)
    tokens = np.load(tokens_path)
    if tokens.ndim == 1:
        tokens = tokens[None, :]
    tokens = torch.tensor(tokens.astype(np.int64))
    with torch.no_grad():
        if cfg.get("num_local_experts") or cfg.get("num_experts"):
            assert not cfg["metamorph"]["qk_norm"], "moe_reference has no q/k norms"
            logits, _ = moe_reference.forward(cfg, params, tokens)
        else:
            logits = model_reference.forward(cfg, params, tokens)
    np.save(out_path, logits.reshape(tokens.shape[0], tokens.shape[1], -1).numpy().astype(np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:4])
