"""Independent float64 PyTorch forward pass over Hugging Face safetensors files, for the growth
tests.

Reads from DIR: small.safetensors + small.json (source model), large.safetensors + large.json
(grown model), tokens.bin (i32 [batch, seq], batch and seq on the command line).
Writes: large_logits.bin (f32 [batch*seq, vocab], the grown model's logits) and deviation.txt,
max |logits_large - logits_small| / max |logits_small|.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_reference import forward as logits  # noqa: E402


def read_safetensors(path):
    """The format itself (u64 header length, JSON header, raw data): no safetensors package."""
    raw = open(path, "rb").read()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    data = raw[8 + length:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=np.float32).reshape(info["shape"])
        tensors[name] = torch.tensor(array, dtype=torch.float64)
    return tensors


def main(directory, batch, seq):
    tokens = torch.tensor(np.fromfile(f"{directory}/tokens.bin", dtype=np.int32).reshape(batch, seq),
                          dtype=torch.long)
    out = {}
    for name in ("small", "large"):
        cfg = json.load(open(f"{directory}/{name}.json"))
        out[name] = logits(cfg, read_safetensors(f"{directory}/{name}.safetensors"), tokens)
    out["large"].numpy().astype(np.float32).tofile(f"{directory}/large_logits.bin")
    deviation = (out["large"] - out["small"]).abs().max() / out["small"].abs().max()
    open(f"{directory}/deviation.txt", "w").write(f"{deviation.item():.6e}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
