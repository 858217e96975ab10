"""PyTorch (float64) reference for the weighted softmax cross-entropy of block diffusion.

Reads from DIR: shape.json ([tokens, vocab]), logits.bin (f32), targets.bin (i32, -1 ignored),
weights.bin (f32 [tokens]), scale.txt. Writes loss.txt (sum of weight * CE over counted rows)
and dlogits.bin (f32, d(scale * loss)/d(logits)).
"""
import json
import sys

import numpy as np
import torch


def main(directory):
    tokens, vocab = json.load(open(f"{directory}/shape.json"))
    logits = torch.tensor(np.fromfile(f"{directory}/logits.bin", dtype=np.float32).reshape(tokens, vocab),
                          dtype=torch.float64, requires_grad=True)
    targets = torch.tensor(np.fromfile(f"{directory}/targets.bin", dtype=np.int32), dtype=torch.long)
    weights = torch.tensor(np.fromfile(f"{directory}/weights.bin", dtype=np.float32), dtype=torch.float64)
    scale = float(open(f"{directory}/scale.txt").read())
    per_row = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1, reduction="none")
    loss = (per_row * weights * (targets != -1)).sum()
    (loss * scale).backward()
    open(f"{directory}/loss.txt", "w").write(f"{loss.item():.17g}\n")
    logits.grad.numpy().astype(np.float32).tofile(f"{directory}/dlogits.bin")


if __name__ == "__main__":
    main(sys.argv[1])
