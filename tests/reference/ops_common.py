"""Shared by the ops_*.py references: one sub-directory per case, holding params.json and the
inputs the C++ test wrote as .npy; results go back as float64 .npy next to them."""
import json
import os
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def cases():
    """Yields (case_dir, params) for every case directory under argv[1], in name order."""
    root = sys.argv[1]
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            with open(os.path.join(path, "params.json")) as f:
                yield path, json.load(f)


def load(case_dir, name, requires_grad=False):
    array = np.load(os.path.join(case_dir, name + ".npy"))
    tensor = torch.from_numpy(array.astype(np.float64 if array.dtype.kind == "f" else np.int64))
    return tensor.requires_grad_(requires_grad) if array.dtype.kind == "f" else tensor


def save(case_dir, name, tensor):
    np.save(os.path.join(case_dir, name + ".npy"),
            tensor.detach().to(torch.float64).numpy())
