"""PyTorch's conversions as the reference for the checkpoint's dtype conversions.

usage: dtype_reference.py IN.f32 OUT_DIR
Reads little-endian float32 values; writes OUT_DIR/bf16.u16 and OUT_DIR/f16.u16 (the bits of
x.to(torch.bfloat16) and x.to(torch.float16)) and OUT_DIR/bf16_f32.f32 / f16_f32.f32 (those
16-bit values widened back to float32)."""
import os
import sys

import numpy as np
import torch

values = torch.from_numpy(np.fromfile(sys.argv[1], dtype="<f4"))
out = sys.argv[2]
for name, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
    narrow = values.to(dtype)
    narrow.view(torch.int16).numpy().astype("<u2").tofile(os.path.join(out, name + ".u16"))
    narrow.to(torch.float32).numpy().astype("<f4").tofile(os.path.join(out, name + "_f32.f32"))
