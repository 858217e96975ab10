#!/usr/bin/env bash
# Block-diffusion training on 2 data-parallel ranks draws the same masks and reports the same
# losses as on one rank: masks are keyed by the global sample index, never by the layout.
# Usage: dp_invariance.sh METAMORPH MPIEXEC PYTHON
set -euo pipefail
mm=$1 mpiexec=$2 python=$3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 80); do
  printf 'Fortune %d: the quick brown fox jumps over the lazy dog %d.\n%%\n' "$i" $((i * 7 % 13))
done > "$dir/corpus.txt"
cat > "$dir/tiny.json" <<'JSON'
{"vocab_size": 258, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
 "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
JSON
export OMP_NUM_THREADS=1
"$mm" data prepare --input "$dir/corpus.txt" --tokenizer byte --output "$dir/data" \
  --validation-fraction 0.1 > /dev/null
common=(--data "$dir/data" --seq 32 --micro-batch 2 --global-batch 8 --lr 1e-3)
"$mm" train --model "$dir/tiny.json" "${common[@]}" --steps 2 --save "$dir/ar" > /dev/null
diffusion=(--init "$dir/ar" --objective diffusion --block-size 4 --noise-sampling stratified
           --mask-schedule position-dependent "${common[@]}" --steps 3)
"$mm" train "${diffusion[@]}" --metrics "$dir/one.jsonl" > /dev/null
"$mpiexec" -np 2 --oversubscribe "$mm" train "${diffusion[@]}" --dp 2 \
  --metrics "$dir/two.jsonl" > /dev/null
"$python" - "$dir/one.jsonl" "$dir/two.jsonl" <<'PY'
import json, sys
one = [json.loads(l) for l in open(sys.argv[1])]
two = [json.loads(l) for l in open(sys.argv[2])]
assert len(one) == len(two) == 3, (len(one), len(two))
for a, b in zip(one, two):
    for key in ("loss", "grad_norm"):
        assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (a["step"], key, a[key], b[key])
print("dp1 == dp2:", [round(a["loss"], 6) for a in one])
PY
