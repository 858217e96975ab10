"""RMSNorm reference: y = x / sqrt(mean(x^2) + eps) * w with autograd gradients."""
import torch

from ops_common import cases, load, save

for case, p in cases():
    x, w = load(case, "x", True), load(case, "w", True)
    dy, dw0 = load(case, "dy"), load(case, "dw0")
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + p["eps"])
    y = x * rstd * w
    y.backward(dy)
    save(case, "y", y)
    save(case, "rstd", rstd.squeeze(-1))
    save(case, "dx", x.grad)
    save(case, "dw", dw0 + w.grad)
