#!/usr/bin/env bash
# All-to-all bytes of expert parallelism per rank and step, from the run's own byte counters
# (metrics comm_bytes.ep, step 1), next to the analytic count. Runs configs/small-moe.json as is
# (top-2 of 8 experts: the bytes depend on where the router sends tokens) and with every token
# sent to every expert (top-8: the count is exact).
# usage: launch/bench/ep_bytes.sh DATA_PREFIX
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data=${1:?usage: ep_bytes.sh DATA_PREFIX}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMP_NUM_THREADS=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
seq=128 micro=2 global=8 h=256 layers=4 experts=8
sed 's/"num_experts_per_tok": 2/"num_experts_per_tok": 8/' "$root/configs/small-moe.json" > "$out/top8.json"
echo "model | layout | ep bytes of rank 0 in step 1 | analytic (uniform routing)"
for model in "$root/configs/small-moe.json" "$out/top8.json"; do
  k=$(grep -o '"num_experts_per_tok": [0-9]*' "$model" | grep -o '[0-9]*$')
  for layout in "1 2 2" "1 4 4" "1 4 2" "2 2 2"; do
    read -r tp dp ep <<< "$layout"
    np=$((tp * dp))
    mpirun --oversubscribe -np "$np" "$root/build/launch/metamorph" train --model "$model" \
      --data "$data" --steps 2 --seq $seq --micro-batch $micro --global-batch $global \
      --tp "$tp" --dp "$dp" --ep "$ep" --metrics "$out/m.jsonl" > /dev/null
    measured=$(head -1 "$out/m.jsonl" | grep -o '"ep":[0-9]*' | grep -o '[0-9]*$')
    # 4 exchanges (dispatch, combine; both again backward) of T k rows of h fp32 per MoE layer
    # and micro-batch, (ep-1)/ep of them to other ranks; + the counts (E int64 all-to-all per
    # forward) + the experts' squared-norm scalar.
    m=$((global / (micro * dp))) tokens=$((micro * seq))
    analytic=$((4 * layers * m * tokens * k * h * 4 * (ep - 1) / ep \
                + layers * m * (experts * 8 * (ep - 1) / ep) + 2 * (ep - 1) * 4 / ep))
    echo "top-$k | tp$tp dp$dp ep$ep | $measured | $analytic"
    rm -f "$out/m.jsonl"
  done
done
