#!/bin/bash
# Runs on the GPU machine: the op harness, the backend's timings and the PyTorch baseline on the
# same card. Expects a bundle directory (default .rt, or $1) holding gpu_ops_tests,
# metamorph_gpu_bench, their libraries (lib/), env.sh, and copies of this script and
# torch_baseline.py (docs/benchmarks.md shows how it is made). Logs go to $OUT.
set -o pipefail
rt=${1:-.rt}
source "$rt/env.sh"
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv \
  | tee "$out/nvidia_smi.txt"
# cuDNN's fused attention step by step first: whether it loads, plans and matches our kernels.
"$rt/cudnn_probe" 2>&1 | tee "$out/cudnn_probe.log"
echo "cudnn_probe exit: $?"
"$rt/gpu_ops_tests" --gtest_brief=1 --gtest_output=json:"$out/gpu_ops_tests.json" 2>&1 \
  | tee "$out/gpu_ops_tests.log" | tail -150
echo "gpu_ops_tests exit: $?"
"$rt/metamorph_gpu_bench" "${BENCH_REPEATS:-20}" 2>&1 | tee "$out/bench.log" | grep -v '^JSON'
PYTHONUNBUFFERED=1 python3 "$rt/torch_baseline.py" "${BENCH_REPEATS:-20}" 2>&1 \
  | tee "$out/torch_baseline.log" | grep -v '^JSON'
