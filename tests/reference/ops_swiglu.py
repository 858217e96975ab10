"""SwiGLU reference: silu(gate) * up with autograd gradients."""
import torch

from ops_common import cases, load, save

for case, p in cases():
    gate, up, dout = load(case, "gate", True), load(case, "up", True), load(case, "dout")
    out = torch.nn.functional.silu(gate) * up
    out.backward(dout)
    save(case, "out", out)
    save(case, "dgate", gate.grad)
    save(case, "dup", up.grad)
