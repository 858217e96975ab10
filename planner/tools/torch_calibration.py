#!/usr/bin/env python3
"""Measure a planner calibration file with PyTorch on one GPU (a stand-in until
`metamorph bench` exists): bf16 GEMM throughput by shape and causal attention throughput.

usage: torch_calibration.py OUT.json [PEAK_TFLOPS]   (PEAK defaults to 989, H100/H200 bf16)
The output follows docs/planner.md ("Calibration file"); pass it to
`metamorph plan --calibration OUT.json`.
"""
import json
import sys

import torch


def seconds(fn, repeats=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 1e3 / repeats


def gemm_tflops(m, n, k):
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    return 2.0 * m * n * k / seconds(lambda: a @ b) / 1e12


def attention_tflops(batch, heads, seq, dim):
    q, k, v = (torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16)

    def step():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(grad)

    # Counted dense (the planner's convention): 4 s^2 d per head forward, 3x with backward.
    return 3 * 4.0 * batch * heads * seq * seq * dim / seconds(step) / 1e12


def main():
    out = sys.argv[1]
    peak = float(sys.argv[2]) if len(sys.argv) > 2 else 989.0
    shapes = [(m, n, k) for m in (2048, 8192, 32768) for n in (512, 1024, 2048, 4096, 14336)
              for k in (1024, 4096, 8192)]
    gemm = [{"m": m, "n": n, "k": k, "tflops": round(gemm_tflops(m, n, k), 1)} for m, n, k in shapes]
    attention = attention_tflops(2, 32, 4096, 128)
    doc = {"format": "metamorph-calibration", "version": 1,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "attention_efficiency": round(min(1.0, attention / peak), 3),
           "attention_tflops_measured": round(attention, 1),
           "gemm": gemm}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps({"attention_tflops": attention,
                      "largest_gemm_tflops": max(g["tflops"] for g in gemm)}))


if __name__ == "__main__":
    main()
