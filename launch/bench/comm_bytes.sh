#!/usr/bin/env bash
# Bytes each rank sends in one training step, per communicator group, for every layout of the
# parallelism issue, from the run's own metrics (step 1; step 2, the last, also validates).
# usage: launch/bench/comm_bytes.sh DATA_PREFIX [MODEL.json]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data=${1:?usage: comm_bytes.sh DATA_PREFIX [MODEL.json]}
model=${2:-$root/configs/small-8head.json}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMP_NUM_THREADS=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "layout | rank 0 bytes in step 1, per group"
for layout in "2 1 1" "4 1 1" "1 2 1" "1 4 1" "1 1 2" "1 1 4" "1 1 2 z" "2 2 1" "2 1 2" "1 2 2" "2 2 2"; do
  read -r tp pp dp z <<< "$layout"
  np=$((tp * pp * dp))
  mpirun --oversubscribe -np "$np" "$root/build/launch/metamorph" train --model "$model" \
    --data "$data" --steps 2 --seq 128 --micro-batch 2 --global-batch 8 --tp "$tp" --pp "$pp" \
    --dp "$dp" ${z:+--zero1} --metrics "$out/m.jsonl" > /dev/null
  echo "tp$tp pp$pp dp$dp${z:+ zero1} | $(head -1 "$out/m.jsonl" | grep -o '"comm_bytes":{[^}]*}')"
  rm -f "$out/m.jsonl"
done
