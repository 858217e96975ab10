#!/usr/bin/env bash
# README command 1, the main job on 2 CPU cores: install, build, tokenise the fortunes corpus,
# dry-run a plan, train a small model (validation loss every 25 steps), evaluate the checkpoint.
# Everything lands under runs/demo/ and data/; a second run reuses the prepared corpus.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
launch/install-deps.sh
launch/build.sh
mm=build/launch/metamorph
$mm version

mkdir -p data runs
if [[ ! -f data/fortunes.idx ]]; then
  $mm data prepare --input /usr/share/games/fortunes --tokenizer sentencepiece --vocab 2048 \
    --output data/fortunes
fi

# What the planner would pick for this model on 8 H100s (a dry run: no GPU involved).
$mm plan --model configs/demo-small.json --gpus 8 --gpu h100 --seq 128 --global-batch 64 --top 3 \
  --out runs/demo-plan.json || echo "(planner not available in this build)"

rm -rf runs/demo
$mm train --model configs/demo-small.json --data data/fortunes --steps 150 --seq 128 \
  --micro-batch 8 --global-batch 16 --lr 3e-3 --warmup 10 --eval-every 25 --eval-batches 8 \
  --save runs/demo --save-every 50 --keep-last 2 --metrics runs/demo/metrics.jsonl

echo "validation loss by step:"
sed -n 's/.*"step":\([0-9]*\).*"val_loss":\([0-9.]*\).*/  step \1: \2/p' runs/demo/metrics.jsonl
$mm eval --ckpt runs/demo --data data/fortunes --seq 128 --batches 16
$mm ckpt verify runs/demo || echo "(ckpt verify not available in this build)"
