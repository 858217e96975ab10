#!/bin/bash
# Runs on a two-GPU machine, from the repository root, with the binaries bundled in .rt/: the NCCL
# Communicator's tests and its bandwidth next to raw NCCL calls. Logs go to $OUT.
set -o pipefail
source .rt/env.sh
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/nvidia_smi_x2.txt"
mpirun -np 2 .rt/nccl_comm_tests --gtest_brief=1 2>&1 | tee "$out/nccl_comm_tests.log" | tail -40
echo "nccl_comm_tests exit: $?"
mpirun -np 2 .rt/metamorph_nccl_bench "${BENCH_REPEATS:-20}" 2>&1 | tee "$out/nccl_bench.log"
