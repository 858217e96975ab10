"""PyTorch figures for the shapes of metamorph_gpu_bench, on the same GPU: torch.matmul (cuBLAS)
and scaled_dot_product_attention (flash backend), bf16, CUDA events, median of the repeats.
Prints one JSON line per figure, like the C++ bench."""
import json
import math
import sys

import torch
import torch.nn.functional as F

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def median_ms(fn):
    for _ in range(3):
        fn()
    times = []
    for _ in range(REPEATS):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def report(op, shape, ms, tflops):
    print(f"{op:22s} {shape:38s} {ms:9.3f} ms {tflops:8.1f} TFLOP/s")
    print("JSON " + json.dumps({"op": op, "shape": shape, "ms": round(ms, 4), "tflops": round(tflops, 2)}))


def main():
    print("torch", torch.__version__, "device:", torch.cuda.get_device_name(0))
    for m, n, k in [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 5632, 2048), (16384, 2048, 5632)]:
        a = torch.rand(m, k, device="cuda", dtype=torch.bfloat16) * 2 - 1
        b = torch.rand(n, k, device="cuda", dtype=torch.bfloat16) * 2 - 1
        ms = median_ms(lambda: torch.matmul(a, b.t()))
        report("torch_matmul_bf16", f"{m}x{n}x{k}", ms, 2 * m * n * k / ms / 1e9)
    for batch, seq, heads, kv_heads, dim, causal in [(4, 2048, 16, 16, 128, True),
                                                     (2, 4096, 16, 4, 128, True),
                                                     (4, 2048, 16, 16, 128, False),
                                                     (2, 4096, 32, 4, 64, True)]:
        q = (torch.rand(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16) * 2 - 1).requires_grad_()
        k = (torch.rand(batch, kv_heads, seq, dim, device="cuda", dtype=torch.bfloat16) * 2 - 1).requires_grad_()
        v = (torch.rand(batch, kv_heads, seq, dim, device="cuda", dtype=torch.bfloat16) * 2 - 1).requires_grad_()
        gqa = heads != kv_heads
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        ms = median_ms(lambda: fwd())
        out = fwd()
        dout = torch.rand_like(out)
        bwd_ms = median_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
        flops = 4.0 * batch * heads * seq * seq * dim / (2 if causal else 1)
        shape = f"b{batch} s{seq} h{heads}/{kv_heads} d{dim} {'causal' if causal else 'full'}"
        report("torch_sdpa_fwd_bf16", shape, ms, flops / ms / 1e9)
        report("torch_sdpa_bwd_bf16", shape, bwd_ms, 2.5 * flops / bwd_ms / 1e9)


def block_diffusion_baselines():
    """The [x_t; x_0] block-diffusion mask (docs/diffusion.md): noisy queries see their own noisy
    block and the clean blocks before it, clean queries the clean blocks up to their own. PyTorch's
    two ways to run it: flex_attention (compiled, with a block mask) and SDPA with a dense boolean
    mask; FLOPs count the allowed pairs, as metamorph_gpu_bench does."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention, dynamic=False)
    batch, seq, heads, dim = 2, 4096, 16, 128
    n = seq // 2
    for block in (16, 64):
        def allowed(b, h, qi, ki):
            q_noisy, k_noisy = qi < n, ki < n
            qb = torch.where(q_noisy, qi, qi - n) // block
            kb = torch.where(k_noisy, ki, ki - n) // block
            noisy_row = torch.where(k_noisy, kb == qb, kb < qb)
            clean_row = (~k_noisy) & (kb <= qb)
            return torch.where(q_noisy, noisy_row, clean_row)
        idx = torch.arange(seq, device="cuda")
        dense = allowed(0, 0, idx[:, None], idx[None, :])
        pairs = dense.sum().item()
        flops = 4.0 * batch * heads * pairs * dim
        shape = f"b{batch} s{seq} h{heads}/{heads} d{dim} block-diffusion B{block}"
        q, k, v = [(torch.rand(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16) * 2 - 1)
                   .requires_grad_() for _ in range(3)]
        block_mask = create_block_mask(allowed, None, None, seq, seq, device="cuda")
        for name, fwd in [("torch_flex", lambda: flex(q, k, v, block_mask=block_mask)),
                          ("torch_sdpa_dense_mask",
                           lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense))]:
            ms = median_ms(lambda: fwd())
            out = fwd()
            dout = torch.rand_like(out)
            bwd_ms = median_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
            report(name + "_fwd_bf16", shape, ms, flops / ms / 1e9)
            report(name + "_bwd_bf16", shape, bwd_ms, 2.5 * flops / bwd_ms / 1e9)


if __name__ == "__main__":
    # `torch_baseline.py REPEATS block-diffusion` times the block-diffusion mask alone.
    if sys.argv[2:3] != ["block-diffusion"]:
        main()
    block_diffusion_baselines()
