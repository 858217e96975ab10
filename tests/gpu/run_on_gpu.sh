#!/bin/bash
# Runs on the GPU machine, from the repository root, with the binaries bundled in .rt/ (see
# docs/benchmarks.md): the op harness, the backend's timings and the PyTorch baseline on the same
# card. Logs go to $OUT.
set -o pipefail
source .rt/env.sh
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv \
  | tee "$out/nvidia_smi.txt"
.rt/gpu_ops_tests --gtest_brief=1 --gtest_output=json:"$out/gpu_ops_tests.json" 2>&1 \
  | tee "$out/gpu_ops_tests.log" | tail -120
echo "gpu_ops_tests exit: $?"
.rt/metamorph_gpu_bench "${BENCH_REPEATS:-20}" 2>&1 | tee "$out/bench.log" | grep -v '^JSON'
PYTHONUNBUFFERED=1 python3 tests/gpu/torch_baseline.py "${BENCH_REPEATS:-20}" 2>&1 \
  | tee "$out/torch_baseline.log" | grep -v '^JSON'
