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
                                                     (4, 2048, 16, 16, 128, False)]:
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


if __name__ == "__main__":
    main()
