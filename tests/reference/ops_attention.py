"""Attention reference: dense float64 attention with GQA and an explicit boolean mask, plus
autograd gradients. The mask is built here from block rectangles, independently of the C++
AttentionMask::allows."""
import torch

from ops_common import cases, load, save


def dense_mask(kind, sq, sk, q_offset, block, clean_offset):
    """mask[i, j]: may query i (at key position q_offset + i) attend to key j."""
    full = torch.zeros(max(sk, q_offset + sq), sk, dtype=torch.bool)
    rows = full.shape[0]
    if kind == "full":
        full[:, :] = True
    elif kind == "causal":
        full = torch.ones(rows, sk, dtype=torch.bool).tril()
    elif kind == "block_causal":
        for qb in range(0, rows, block):
            full[qb:qb + block, :qb + block] = True
    elif kind == "block_diffusion":
        n = clean_offset
        noisy_blocks = range(0, (n + block - 1) // block)
        clean_blocks = range(0, (max(rows, sk) - n + block - 1) // block)
        for qb in noisy_blocks:             # noisy query block qb
            q_lo, q_hi = qb * block, min((qb + 1) * block, n)
            for kb in noisy_blocks:         # its own noisy block, bidirectionally
                if kb == qb:
                    full[q_lo:q_hi, kb * block:min((kb + 1) * block, n)] = True
            for kb in clean_blocks:         # clean blocks strictly before it
                if kb < qb:
                    full[q_lo:q_hi, n + kb * block:n + (kb + 1) * block] = True
        for qb in clean_blocks:             # clean query block qb: clean blocks up to its own
            q_lo, q_hi = n + qb * block, n + (qb + 1) * block
            for kb in clean_blocks:
                if kb <= qb:
                    full[q_lo:q_hi, n + kb * block:n + (kb + 1) * block] = True
    else:
        raise ValueError(kind)
    return full[q_offset:q_offset + sq, :sk]


for case, p in cases():
    q, k, v = load(case, "q", True), load(case, "k", True), load(case, "v", True)
    dout = load(case, "dout")
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    mask = dense_mask(p["kind"], sq, sk, p["q_offset"], p["block_size"], p["clean_offset"])
    kr = k.repeat_interleave(h // hk, dim=2)  # q head j uses kv head j // (h / hk)
    vr = v.repeat_interleave(h // hk, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kr) * p["scale"]
    scores = scores.masked_fill(~mask, float("-inf"))
    any_key = mask.any(-1)  # [sq]
    safe = torch.where(any_key[:, None], scores, torch.zeros_like(scores))
    probs = torch.softmax(safe, dim=-1) * any_key[:, None]
    out = torch.einsum("bhqk,bkhd->bqhd", probs, vr)
    lse = torch.logsumexp(safe, dim=-1).masked_fill(~any_key, float("-inf"))
    out.backward(dout)
    save(case, "out", out)
    save(case, "lse", lse)
    save(case, "dq", q.grad)
    save(case, "dk", k.grad)
    save(case, "dv", v.grad)
