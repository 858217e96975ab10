"""RoPE reference in the Hugging Face Llama layout (rotate_half), angles in float64; the
backward is autograd's gradient through the rotation."""
import torch

from ops_common import cases, load, save


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


for case, p in cases():
    x, dy = load(case, "x", True), load(case, "dy")
    positions = load(case, "positions").to(torch.float64)
    dim = x.shape[-1]
    inv_freq = 1.0 / (p["theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = torch.outer(positions, inv_freq)            # [seq, dim/2]
    emb = torch.cat((angles, angles), dim=-1)[None, :, None, :]  # [1, seq, 1, dim]
    y = x * emb.cos() + rotate_half(x) * emb.sin()
    y.backward(dy)
    save(case, "y", y)
    save(case, "dx", x.grad)
