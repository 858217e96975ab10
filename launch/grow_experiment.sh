#!/usr/bin/env bash
# Scale-up experiment (docs/transforms.md, "Grow"): train a small model S on the fortunes corpus,
# grow it 2x in width and 2x in depth into L, keep training; train L from scratch on the same
# number of tokens; compare validation loss against total training FLOPs (S's included), and
# compare depth modes (interleaved vs stacked copies, zero-output layers, AKI).
#
#   launch/grow_experiment.sh [OUT_DIR]        (default: grow-experiment/)
#
# Every knob is an environment variable, so the GPU issues can rerun it larger, e.g.
#   S_HIDDEN=512 S_LAYERS=4 S_STEPS=4000 L_STEPS=4000 SEQ=512 launch/grow_experiment.sh runs/grow
# Results: OUT_DIR/results.json, OUT_DIR/results.md and OUT_DIR/loss_vs_flops.svg
# (made by launch/plot_grow_experiment.py).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-grow-experiment}
mm=${METAMORPH:-$root/build/launch/metamorph}
python=${METAMORPH_PYTHON:-/usr/bin/python3}
corpus=${CORPUS:-/usr/share/games/fortunes}

# The small model S; L doubles hidden size, FFN size, heads, KV heads and layers (head_dim fixed).
s_hidden=${S_HIDDEN:-64}
s_ffn=${S_FFN:-$((s_hidden * 8 / 3 / 8 * 8))}
s_layers=${S_LAYERS:-2}
s_heads=${S_HEADS:-4}
s_kv_heads=${S_KV_HEADS:-2}
head_dim=$((s_hidden / s_heads))
width=${WIDTH_FACTOR:-2}
depth=${DEPTH_FACTOR:-2}

s_steps=${S_STEPS:-600}        # S "to convergence-ish"
l_steps=${L_STEPS:-600}        # continued training of the grown L
seq=${SEQ:-128}
micro=${MICRO_BATCH:-8}
batch=${GLOBAL_BATCH:-8}
lr=${LR:-2e-3}
l_lr=${L_LR:-$lr}
warmup=${WARMUP:-20}
eval_every=${EVAL_EVERY:-50}
eval_batches=${EVAL_BATCHES:-8}
seed=${SEED:-1}
# The continued runs start a new data order: `train --init` starts at sample 0, and with S's seed
# the grown model would first re-read exactly the samples S was trained on.
continue_seed=${CONTINUE_SEED:-$((seed + 1))}
# Which grown variants to continue: method:placement:depth-init
variants=${VARIANTS:-"fpi:interleave:zero aki:interleave:zero fpi:interleave:copy fpi:stack:copy"}

[[ -x $mm ]] || { echo "grow_experiment: $mm is not built (launch/build.sh)" >&2; exit 2; }
[[ -e $corpus ]] || { echo "grow_experiment: corpus $corpus missing (apt-get install fortunes)" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

config() {  # config hidden ffn layers heads kv_heads
  cat <<JSON
{"model_type": "llama", "vocab_size": 258, "hidden_size": $1, "intermediate_size": $2,
 "num_hidden_layers": $3, "num_attention_heads": $4, "num_key_value_heads": $5,
 "head_dim": $head_dim, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
 "tie_word_embeddings": true, "max_position_embeddings": $seq, "initializer_range": 0.02}
JSON
}
config "$s_hidden" "$s_ffn" "$s_layers" "$s_heads" "$s_kv_heads" > "$out/small.json"
config $((s_hidden * width)) $((s_ffn * width)) $((s_layers * depth)) $((s_heads * width)) \
  $((s_kv_heads * width)) > "$out/large.json"

if [[ ! -e $out/data/fortunes.bin ]]; then
  mkdir -p "$out/data"
  "$mm" data prepare --input "$corpus" --tokenizer byte --output "$out/data/fortunes"
fi
data=$out/data/fortunes

train() {  # train NAME STEPS LR SEED (--model CFG | --init CKPT)
  local name=$1 steps=$2 rate=$3 run_seed=$4
  shift 4
  if [[ -e $out/$name/latest ]]; then echo "== $name: done already"; return; fi
  echo "== $name"
  rm -rf "${out:?}/$name" "$out/$name.jsonl"
  "$mm" train "$@" --data "$data" --steps "$steps" --seq "$seq" --micro-batch "$micro" \
    --global-batch "$batch" --lr "$rate" --warmup "$warmup" --eval-every "$eval_every" \
    --eval-batches "$eval_batches" --seed "$run_seed" --save "$out/$name" --metrics "$out/$name.jsonl"
}

train small "$s_steps" "$lr" "$seed" --model "$out/small.json"
train scratch $((s_steps + l_steps)) "$l_lr" "$seed" --model "$out/large.json"
for variant in $variants; do
  IFS=: read -r method placement init <<<"$variant"
  name=grown_${method}_${placement}_${init}
  if [[ ! -e $out/$name.init/latest ]]; then
    rm -rf "${out:?}/$name.init"
    "$mm" grow --from "$out/small" --to "$out/large.json" --method "$method" --depth "$placement" \
      --depth-init "$init" --seed "$seed" --out "$out/$name.init" --json > "$out/$name.grow.json"
  fi
  train "$name" "$l_steps" "$l_lr" "$continue_seed" --init "$out/$name.init"
done

"$python" "$root/launch/plot_grow_experiment.py" "$out"
