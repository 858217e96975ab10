"""torch.optim.AdamW reference: several steps from the given initial parameter with the given
gradient sequence, in float32 like the backend."""
import numpy as np
import torch

from ops_common import cases, load, save

for case, p in cases():
    param = torch.nn.Parameter(load(case, "param").to(torch.float32))
    grads = load(case, "grads").to(torch.float32)  # [steps, n]
    opt = torch.optim.AdamW([param], lr=p["lr"], betas=(p["beta1"], p["beta2"]), eps=p["eps"],
                            weight_decay=p["weight_decay"], foreach=False)
    for step in range(grads.shape[0]):
        param.grad = grads[step].clone()
        opt.step()
    state = opt.state[param]
    save(case, "param_out", param)
    save(case, "m_out", state["exp_avg"])
    save(case, "v_out", state["exp_avg_sq"])
