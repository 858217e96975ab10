"""Softmax cross-entropy reference: summed loss, per-token log-sum-exp, and the gradient of
grad_scale * loss (zero rows where the target is the ignore index)."""
import torch

from ops_common import cases, load, save

for case, p in cases():
    logits, targets = load(case, "logits", True), load(case, "targets")
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=p["ignore_index"],
                                             reduction="sum")
    (loss * p["grad_scale"]).backward()
    save(case, "loss", loss.reshape(1))
    save(case, "lse", torch.logsumexp(logits, dim=-1))
    save(case, "dlogits", logits.grad)
