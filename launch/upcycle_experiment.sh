#!/usr/bin/env bash
# Scale-out experiment (docs/transforms.md, "Upcycle"): train a dense model D on the fortunes
# corpus, then from D's checkpoint continue (a) D itself and (b) the MoE upcycled from it, with the
# same tokens; train (c) an MoE of the same shape from scratch. Compare validation loss against
# tokens and FLOPs, expert load per layer over training, and router entropy.
#
#   launch/upcycle_experiment.sh [OUT_DIR]        (default: upcycle-experiment/)
#
# Every knob is an environment variable, so the GPU issues can rerun it larger, e.g.
#   HIDDEN=512 LAYERS=8 D_STEPS=4000 C_STEPS=4000 SEQ=512 launch/upcycle_experiment.sh runs/upcycle
# Results: OUT_DIR/results.json, OUT_DIR/results.md, OUT_DIR/loss_vs_tokens.svg,
# OUT_DIR/loss_vs_flops.svg, OUT_DIR/expert_load.svg, OUT_DIR/router_entropy.svg
# (made by launch/plot_upcycle_experiment.py).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-upcycle-experiment}
mm=${METAMORPH:-$root/build/launch/metamorph}
python=${METAMORPH_PYTHON:-/usr/bin/python3}
corpus=${CORPUS:-/usr/share/games/fortunes}

# The dense model D.
hidden=${HIDDEN:-64}
ffn=${FFN:-$((hidden * 8 / 3 / 8 * 8))}
layers=${LAYERS:-2}
heads=${HEADS:-4}
kv_heads=${KV_HEADS:-2}
head_dim=$((hidden / heads))
# The MoE (defaults: AquilaMoE's scale-out recipe).
experts=${EXPERTS:-8}
top_k=${TOP_K:-2}
granularity=${GRANULARITY:-1}
shared_experts=${SHARED_EXPERTS:-0}
router_std=${ROUTER_STD:-0.02}
noise=${NOISE:-0}
drop_fraction=${DROP_FRACTION:-0}
aux_loss=${AUX_LOSS:-0.001}
z_loss=${Z_LOSS:-0.01}

d_steps=${D_STEPS:-600}   # D before upcycling
c_steps=${C_STEPS:-600}   # the continued runs (dense and upcycled)
seq=${SEQ:-128}
micro=${MICRO_BATCH:-8}
batch=${GLOBAL_BATCH:-8}
lr=${LR:-2e-3}
c_lr=${C_LR:-$lr}
warmup=${WARMUP:-20}
eval_every=${EVAL_EVERY:-50}
eval_batches=${EVAL_BATCHES:-8}
seed=${SEED:-1}
# Upcycled variants besides the plain copy ("upcycled"): NAME:--option=value,--option=value
# (any `metamorph upcycle` options, added to the ones above). Drop-Upcycling's best re-draw
# fraction is 0.5; a 10x stronger balancing loss tests whether the copies' collapse onto a few
# experts matters.
variants=${VARIANTS-"drop50:--drop-fraction=0.5 aux01:--aux-loss-coef=0.01"}
# All continued runs read the same tokens, in a new order: `train --init` starts at sample 0,
# and with D's seed they would first re-read exactly the samples D was trained on.
continue_seed=${CONTINUE_SEED:-$((seed + 1))}

[[ -x $mm ]] || { echo "upcycle_experiment: $mm is not built (launch/build.sh)" >&2; exit 2; }
[[ -e $corpus ]] || { echo "upcycle_experiment: corpus $corpus missing (apt-get install fortunes)" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

cat > "$out/dense.json" <<JSON
{"model_type": "llama", "vocab_size": 258, "hidden_size": $hidden, "intermediate_size": $ffn,
 "num_hidden_layers": $layers, "num_attention_heads": $heads, "num_key_value_heads": $kv_heads,
 "head_dim": $head_dim, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
 "tie_word_embeddings": true, "max_position_embeddings": $seq, "initializer_range": 0.02}
JSON

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

train dense "$d_steps" "$lr" "$seed" --model "$out/dense.json"
upcycle() {  # upcycle NAME [--option=value ...]: the options above, overridden by the extras
  local name=$1
  shift
  local -a base=(--experts "$experts" --top-k "$top_k" --granularity "$granularity"
                 --shared-experts "$shared_experts" --router-std "$router_std" --noise "$noise"
                 --drop-fraction "$drop_fraction" --aux-loss-coef "$aux_loss" --z-loss-coef "$z_loss"
                 --seed "$seed")
  local -a args=()
  local i
  for ((i = 0; i < ${#base[@]}; i += 2)); do
    [[ " $* " == *" ${base[i]}="* ]] || args+=("${base[i]}" "${base[i + 1]}")
  done
  if [[ ! -e $out/$name.init/latest ]]; then
    rm -rf "${out:?}/$name.init"
    "$mm" upcycle --from "$out/dense" "${args[@]}" "$@" --out "$out/$name.init" --json \
      > "$out/$name.upcycle.json"
  fi
  train "$name" "$c_steps" "$c_lr" "$continue_seed" --init "$out/$name.init"
}

train dense_continued "$c_steps" "$c_lr" "$continue_seed" --init "$out/dense"
upcycle upcycled
for variant in $variants; do
  IFS=: read -r name options <<<"$variant"
  IFS=, read -r -a extra <<<"$options"
  upcycle "upcycled_$name" "${extra[@]}"
done
# The MoE's config, as upcycle wrote it, for the from-scratch run.
"$mm" ckpt inspect "$out/upcycled.init" --json |
  "$python" -c 'import json, sys; json.dump(json.load(sys.stdin)["config"], sys.stdout, indent=1)' \
    > "$out/moe.json"
train moe_scratch $((d_steps + c_steps)) "$lr" "$seed" --model "$out/moe.json"

"$python" "$root/launch/plot_upcycle_experiment.py" "$out"
