#!/usr/bin/env bash
# One CPU training step of the same model, side by side: metamorph's CPU backend against
# PyTorch (eager, fp32, torch.optim.AdamW), both on every core of this machine.
# usage: launch/bench/cpu_train_vs_torch.sh [MODEL.json] [SEQ] [MICRO] [GLOBAL] [STEPS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
model=${1:-$root/configs/tiny-llama-10m.json}
seq=${2:-256}
micro=${3:-4}
global=${4:-8}
steps=${5:-5}
threads=$(nproc)
echo "metamorph: $("$root/build/launch/metamorph" bench train-step --model "$model" --seq "$seq" \
  --micro-batch "$micro" --global-batch "$global" --steps "$steps")"
echo "pytorch:   $(/usr/bin/python3 "$root/launch/bench/torch_cpu_train.py" "$model" --seq "$seq" \
  --micro-batch "$micro" --global-batch "$global" --steps "$steps" --threads "$threads")"
