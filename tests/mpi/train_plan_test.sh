#!/usr/bin/env bash
# `metamorph train --plan`: a plan for 2 GPUs runs on 2 ranks with the plan's layout, and is
# refused (exit 2, both numbers named) on 1 rank or with a disagreeing flag. An MoE plan with
# whole experts over the TP group (tp 2, etp 1, ep 2) runs them. A block-diffusion plan (tp 2)
# continues the AR checkpoint as a diffusion LM with the plan's layout.
# usage: train_plan_test.sh METAMORPH MPIEXEC
set -euo pipefail
bin=$1 mpiexec=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
for i in $(seq 40); do printf 'Fortune %d: the quick brown fox jumps over the lazy dog.\n%%\n' "$i"; done >corpus.txt
"$bin" data prepare --input corpus.txt --tokenizer byte --output data --validation-fraction 0.1 >/dev/null
cat >model.json <<'JSON'
{"vocab_size": 258, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
 "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
JSON
"$bin" plan --model model.json --gpus 2 --gpus-per-node 2 --seq 32 --global-batch 4 --tp 2 \
  --no-recompute --out plan.json >/dev/null
"$mpiexec" -np 2 --oversubscribe "$bin" train --plan plan.json --data data --steps 2 \
  --metrics metrics.jsonl --save ar >log.txt 2>&1 || { cat log.txt; exit 1; }
grep -q '"step":2' metrics.jsonl || { echo "no step 2 in the metrics"; exit 1; }
grep -q 'tp 2' log.txt || { echo "the run did not use the plan's tp 2:"; cat log.txt; exit 1; }

grep -q 'interleaved pairs' log.txt && { echo "a plan without pairs ran them:"; cat log.txt; exit 1; }

# A plan with interleaved pairs (two micro-batches per step) runs them.
"$bin" plan --model model.json --gpus 2 --gpus-per-node 2 --seq 32 --global-batch 4 --tp 2 \
  --no-recompute --interleave-pairs --out pairs-plan.json >/dev/null
grep -q '"interleave_pairs": true' pairs-plan.json || { echo "no pairs in the plan:"; cat pairs-plan.json; exit 1; }
"$mpiexec" -np 2 --oversubscribe "$bin" train --plan pairs-plan.json --data data --steps 2 \
  --metrics pairs-metrics.jsonl >log.txt 2>&1 || { cat log.txt; exit 1; }
grep -q '"step":2' pairs-metrics.jsonl || { echo "no step 2 in the pairs metrics"; exit 1; }
grep -q 'interleaved pairs' log.txt || { echo "the run did not use the plan's pairs:"; cat log.txt; exit 1; }

# An MoE plan for this runtime with whole experts over the TP group runs that layout.
cat >moe.json <<'JSON'
{"vocab_size": 258, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
 "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
 "model_type": "qwen2_moe", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
JSON
"$bin" plan --model moe.json --gpus 2 --gpus-per-node 2 --seq 32 --global-batch 4 --tp 2 --etp 1 \
  --ep 2 --no-recompute --accounting metamorph --out moe-plan.json >/dev/null
"$mpiexec" -np 2 --oversubscribe "$bin" train --plan moe-plan.json --data data --steps 2 \
  --metrics moe-metrics.jsonl >log.txt 2>&1 || { cat log.txt; exit 1; }
grep -q '"step":2' moe-metrics.jsonl || { echo "no step 2 in the MoE metrics"; exit 1; }
grep -q 'ep 2, etp 1' log.txt || { echo "the run did not use the plan's ep 2 etp 1:"; cat log.txt; exit 1; }

"$bin" plan --model model.json --gpus 2 --gpus-per-node 2 --seq 32 --global-batch 4 --tp 2 \
  --no-recompute --objective diffusion --out diffusion-plan.json >/dev/null
"$mpiexec" -np 2 --oversubscribe "$bin" train --plan diffusion-plan.json --init ar --data data \
  --steps 2 --block-size 4 >log.txt 2>&1 || { cat log.txt; exit 1; }
grep -q 'added \[MASK\] as token 258' log.txt || { echo "no [MASK] added:"; cat log.txt; exit 1; }
grep -q 'tp 2' log.txt || { echo "the diffusion run did not use tp 2:"; cat log.txt; exit 1; }

expect_refusal() {  # expected-message command...
  local want=$1; shift
  set +e
  "$@" >out.txt 2>&1
  local rc=$?
  set -e
  [[ $rc == 2 ]] || { echo "exit $rc, expected 2: $*"; cat out.txt; exit 1; }
  grep -q -- "$want" out.txt || { echo "missing '$want' from: $*"; cat out.txt; exit 1; }
}
expect_refusal "the plan is for 2 ranks (tp 2 x pp 1 x dp 1) but this job runs on 1 ranks" \
  "$bin" train --plan plan.json --data data --steps 2
expect_refusal "train: --dp 2 disagrees with the plan's 1" \
  "$mpiexec" -np 2 --oversubscribe "$bin" train --plan plan.json --data data --steps 2 --dp 2
expect_refusal "train: --interleave-pairs disagrees with the plan" \
  "$mpiexec" -np 2 --oversubscribe "$bin" train --plan plan.json --data data --steps 2 \
  --interleave-pairs
echo "train --plan: ok"
