#!/usr/bin/env bash
# Expert load balance over training on the fortunes corpus: trains configs/tiny-moe.json
# (8 experts, top-2, a shared expert, MoE from layer 1) and plots the share of routed slots per
# expert and layer at every step (docs/figures/expert_load_fortunes.png).
# usage: launch/expert_load_experiment.sh [WORKDIR=runs/expert-load] [STEPS=300]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:-$root/runs/expert-load}
steps=${2:-300}
mm=$root/build/launch/metamorph
mkdir -p "$work" "$root/data"
if [[ ! -f $root/data/fortunes.idx ]]; then
  "$mm" data prepare --input /usr/share/games/fortunes --tokenizer sentencepiece --vocab 2048 \
    --output "$root/data/fortunes"
fi
rm -rf "$work/run"
"$mm" train --model "$root/configs/tiny-moe.json" --data "$root/data/fortunes" --steps "$steps" \
  --seq 128 --micro-batch 8 --global-batch 16 --lr 3e-3 --warmup 10 --eval-every 50 \
  --eval-batches 4 --metrics "$work/metrics.jsonl"
/usr/bin/python3 "$root/launch/plot_expert_load.py" "$work/metrics.jsonl" \
  "$root/docs/figures/expert_load_fortunes.png" \
  "tiny-moe on fortunes: share of routed slots per expert (aux 0.01)"
