"""Bytes a GPT layer (Megatron/GPT-3 style: LayerNorm, fused QKV, unfused softmax attention
with dropout, GELU MLP of 4h, dropout) saves for backward in PyTorch, measured with
saved-tensor hooks: the independent reference for the planner's activation accounting.

usage: planner_gpt_activations.py SEQ BATCH HIDDEN HEADS  ->  {"bytes": N}
Runs in fp32 on the CPU; each storage is counted once, parameters are not counted. Dropout
keeps a 1-byte mask, as the fused GPU kernels do (the CPU kernel would keep an fp32 one).
"""
import json
import math
import sys

import torch


def main():
    s, b, h, a = (int(v) for v in sys.argv[1:5])
    d = h // a
    torch.manual_seed(0)
    ln1, ln2 = torch.nn.LayerNorm(h), torch.nn.LayerNorm(h)
    qkv, proj = torch.nn.Linear(h, 3 * h), torch.nn.Linear(h, h)
    fc1, fc2 = torch.nn.Linear(h, 4 * h), torch.nn.Linear(4 * h, h)
    params = {p.data_ptr() for m in (ln1, ln2, qkv, proj, fc1, fc2) for p in m.parameters()}
    x = torch.randn(s, b, h, requires_grad=True)

    saved = {}

    def dropout(t, p=0.1):
        keep = torch.rand(t.shape) >= p
        return t * keep * (1.0 / (1.0 - p))

    def pack(t):
        if t.data_ptr() not in params:
            storage = t.storage()
            saved[storage.data_ptr()] = storage.size() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q, k, v = qkv(ln1(x)).view(s, b, a, 3 * d).split(d, dim=-1)
        q = q.permute(1, 2, 0, 3).contiguous()  # [b, a, s, d]
        k = k.permute(1, 2, 3, 0).contiguous()  # [b, a, d, s]
        v = v.permute(1, 2, 0, 3).contiguous()
        scores = torch.matmul(q, k) * (1.0 / math.sqrt(d))
        probs = dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).permute(2, 0, 1, 3).contiguous().view(s, b, h)
        hidden = x + dropout(proj(context))
        mlp = fc2(torch.nn.functional.gelu(fc1(ln2(hidden))))
        out = hidden + dropout(mlp)
    out.sum().backward()  # the graph is complete and usable
    print(json.dumps({"bytes": sum(saved.values())}))


if __name__ == "__main__":
    main()
