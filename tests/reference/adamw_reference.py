"""torch.optim.AdamW with clip_grad_norm_, decay and no-decay groups, for metamorph's AdamW test.

DIR/setup.json: {"shapes": [[...], ...], "decay": [true, ...], "lrs": [...], "beta1", "beta2",
"eps", "weight_decay", "clip"}; DIR/init.bin: initial params (f32, concatenated);
DIR/grads.bin: per step, every param's gradient (f32). Writes DIR/final.bin.
"""
import json
import sys

import numpy as np
import torch


def main(directory):
    setup = json.load(open(f"{directory}/setup.json"))
    shapes = setup["shapes"]
    sizes = [int(np.prod(s)) for s in shapes]
    init = np.fromfile(f"{directory}/init.bin", dtype=np.float32)
    grads = np.fromfile(f"{directory}/grads.bin", dtype=np.float32).reshape(len(setup["lrs"]), -1)
    params, offset = [], 0
    for shape, n in zip(shapes, sizes):
        params.append(torch.nn.Parameter(torch.tensor(init[offset:offset + n].reshape(shape))))
        offset += n
    decay = [p for p, d in zip(params, setup["decay"]) if d]
    no_decay = [p for p, d in zip(params, setup["decay"]) if not d]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": setup["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=setup["lrs"][0], betas=(setup["beta1"], setup["beta2"]), eps=setup["eps"])
    for step, lr in enumerate(setup["lrs"]):
        offset = 0
        for p, shape, n in zip(params, shapes, sizes):
            p.grad = torch.tensor(grads[step, offset:offset + n].reshape(shape))
            offset += n
        torch.nn.utils.clip_grad_norm_(params, setup["clip"])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    np.concatenate([p.detach().numpy().reshape(-1) for p in params]).astype(np.float32).tofile(
        f"{directory}/final.bin")


if __name__ == "__main__":
    main(sys.argv[1])
