#!/bin/bash
# Runs on a two-GPU machine, from the repository root, with the binaries bundled in .rt/: the NCCL
# Communicator's tests (each under its own time limit, so a hang shows as one failed test) and its
# bandwidth next to raw NCCL calls. Logs go to $OUT.
set -o pipefail
rt=${1:-.rt}
source "$rt/env.sh"
export PMIX_MCA_pcompress_base_silence_warning=1 PMIX_MCA_mca_base_component_show_load_errors=0
export NCCL_DEBUG=WARN
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/nvidia_smi_x2.txt"
for t in $("$rt"/nccl_comm_tests --gtest_list_tests | awk '/^[^ ]/{s=$1} /^  /{print s $1}'); do
  timeout 60 mpirun -np 2 "$rt"/nccl_comm_tests --gtest_filter="$t" --gtest_brief=1 >/tmp/one.log 2>&1
  echo "$t exit: $?" | tee -a "$out/nccl_comm_tests.log"
  grep -vE "^\s*$" /tmp/one.log | tail -15 >>"$out/nccl_comm_tests.log"
done
timeout 180 mpirun -np 2 "$rt"/metamorph_nccl_bench "${BENCH_REPEATS:-20}" ${BENCH_LARGEST:-} 2>&1 | tee "$out/nccl_bench.log"
