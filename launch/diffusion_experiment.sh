#!/usr/bin/env bash
# The block-diffusion experiment of docs/diffusion.md: continue the fortunes AR model as a
# diffusion LM (B = 4, 8, 16; uniform vs position-dependent masking; logit shift on/off at
# B = 8), the same number of steps each, and report the validation NLL bound next to the AR
# model's validation NLL (before, and after continuing AR training for the same steps), and
# decoding tokens per forward pass and tokens/s at thresholds 0.7/0.8/0.9/0.95 next to AR
# decoding of the same checkpoint in the same run, with sample texts.
#
# Usage: launch/diffusion_experiment.sh        Every knob is an environment variable:
#   MM=build/launch/metamorph   the binary (copy it elsewhere to rebuild while this runs)
#   OUT=runs/diffusion          results: report.md, samples.md, one checkpoint per variant
#   DATA=data/fortunes          the corpus (prepared from /usr/share/games/fortunes if absent)
#   AR_CKPT=                    an AR checkpoint to start from (the demo's runs/demo); empty:
#   MODEL=configs/demo-small.json AR_STEPS=600   train one first ($OUT/ar)
#   STEPS=300                   diffusion (and AR-continued) steps per variant
#   SEQ=128 MICRO_BATCH=8 GLOBAL_BATCH=8 LR=1e-3 EVAL_BATCHES=8 EVALS=3 (validations per run)
#   BLOCK_SIZES="4 8 16" SCHEDULES="uniform position-dependent" NO_SHIFT_AT=8 (empty: skip)
#   THRESHOLDS="0.7 0.8 0.9 0.95" MAX_TOKENS=64 PROMPT="..." OMP_NUM_THREADS=1
#   DEVICE=cpu                  cuda: train, eval and decode on one GPU (docs/diffusion.md)
# tokens/s is wall-clock; tokens per CPU second (process time) is steadier on a shared machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mm=${MM:-build/launch/metamorph}
out=${OUT:-runs/diffusion}
data=${DATA:-data/fortunes}
model=${MODEL:-configs/demo-small.json}
steps=${STEPS:-300}
seq=${SEQ:-128}
micro=${MICRO_BATCH:-8}
global=${GLOBAL_BATCH:-8}
lr=${LR:-1e-3}
eval_batches=${EVAL_BATCHES:-8}
evals=${EVALS:-3}
block_sizes=${BLOCK_SIZES:-4 8 16}
schedules=${SCHEDULES:-uniform position-dependent}
no_shift_at=${NO_SHIFT_AT-8}
thresholds=${THRESHOLDS:-0.7 0.8 0.9 0.95}
max_tokens=${MAX_TOKENS:-64}
prompt=${PROMPT:-Q: What is the difference between a computer and a}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
device=(--device "${DEVICE:-cpu}")
py=/usr/bin/python3
mkdir -p "$out"
start=$(date +%s)
if [[ ! -f $data.idx ]]; then
  mkdir -p "$(dirname "$data")"
  $mm data prepare --input /usr/share/games/fortunes --tokenizer sentencepiece --vocab 2048 \
    --output "$data"
fi
common=(--data "$data" --seq "$seq" --micro-batch "$micro" --global-batch "$global"
        --eval-batches "$eval_batches")
every=$((steps / evals > 0 ? steps / evals : 1))

last_val() {  # the last val_loss of a metrics file
  printf '%.4f' "$(sed -n 's/.*"val_loss":\([0-9.eE+-]*\).*/\1/p' "$1" | tail -1)"
}
field() {  # field NAME JSON
  $py -c 'import json,sys; v=json.loads(sys.argv[2])[sys.argv[1]]; print(f"{v:.2f}" if isinstance(v, float) else v)' "$1" "$2"
}

ar=${AR_CKPT:-}
if [[ -z $ar ]]; then
  ar=$out/ar
  if [[ ! -d $ar ]]; then
    ar_steps=${AR_STEPS:-600}
    $mm train "${device[@]}" --model "$model" "${common[@]}" --steps "$ar_steps" --lr 3e-3 \
      --warmup $((ar_steps / 30)) --save "$ar" --metrics "$out/ar.jsonl"
  fi
fi
# The AR model's validation NLL on the batches the diffusion runs validate on, and after the
# same number of further AR steps (the diffusion runs' training budget spent on AR instead).
ar_nll=$($mm eval "${device[@]}" --ckpt "$ar" --data "$data" --seq "$seq" --micro-batch "$micro" \
  --batches "$eval_batches" --json | $py -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["loss"])')
rm -rf "${out:?}/ar_continued"
$mm train "${device[@]}" --init "$ar" "${common[@]}" --steps "$steps" --lr "$lr" \
  --warmup $((steps / 30)) \
  --eval-every "$every" --save "$out/ar_continued" --metrics "$out/ar_continued.jsonl"
ar_continued_nll=$(last_val "$out/ar_continued.jsonl")

variants=()
for b in $block_sizes; do
  for schedule in $schedules; do variants+=("$b $schedule logit-shift"); done
done
[[ -n $no_shift_at ]] && variants+=("$no_shift_at uniform no-logit-shift")

report=$out/report.md
samples=$out/samples.md
{
  echo "# Block diffusion on fortunes ($(date -u +%F))"
  echo
  echo "AR start: \`$ar\`, validation NLL $ar_nll nats/token; after $steps more AR steps" \
    "(lr $lr): $ar_continued_nll. Every diffusion variant: $steps steps from the AR start," \
    "seq $seq, global batch $global, lr $lr; validation: $eval_batches batches of $micro."
  echo "Device: ${DEVICE:-cpu}. Decoding: greedy, $max_tokens new tokens," \
    "OMP_NUM_THREADS=$OMP_NUM_THREADS; AR decoding" \
    "of the same checkpoint right before each diffusion decoding."
  echo
  echo "| B | schedule | shift | val NLL bound | threshold | tokens/pass | tokens/s | AR tokens/s | tokens/CPU-s | AR tokens/CPU-s |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$report"
{
  echo "# Samples (prompt: \"$prompt\", greedy, $max_tokens new tokens)"
  echo
  echo "## AR start"
  echo
  echo '```'
  field text "$($mm generate "${device[@]}" --ckpt "$ar" --data "$data" --prompt "$prompt" --max-tokens "$max_tokens" --mode ar --json)"
  echo '```'
} > "$samples"

for v in "${variants[@]}"; do
  read -r b schedule shift <<< "$v"
  name="b${b}_${schedule}_${shift}"
  rm -rf "${out:?}/$name"
  $mm train "${device[@]}" --init "$ar" --objective diffusion --block-size "$b" \
    --mask-schedule "$schedule" --"$shift" "${common[@]}" --steps "$steps" --lr "$lr" --warmup $((steps / 30)) \
    --eval-every "$every" --save "$out/$name" --metrics "$out/$name.jsonl"
  bound=$(last_val "$out/$name.jsonl")
  for threshold in $thresholds; do
    ar_json=$($mm generate "${device[@]}" --ckpt "$out/$name" --prompt "$prompt" --max-tokens "$max_tokens" \
      --mode ar --json)
    dlm=$($mm generate "${device[@]}" --ckpt "$out/$name" --prompt "$prompt" --max-tokens "$max_tokens" \
      --mode diffusion --threshold "$threshold" --json)
    echo "| $b | $schedule | $shift | $bound | $threshold | $(field tokens_per_forward "$dlm")" \
      "| $(field tokens_per_s "$dlm") | $(field tokens_per_s "$ar_json")" \
      "| $(field tokens_per_cpu_s "$dlm") | $(field tokens_per_cpu_s "$ar_json") |" >> "$report"
    {
      echo
      echo "## B=$b $schedule $shift, threshold $threshold"
      echo
      echo '```'
      field text "$dlm"
      echo '```'
    } >> "$samples"
  done
done
echo >> "$report"
echo "Total time: $(($(date +%s) - start)) s wall." >> "$report"
cat "$report"
echo "samples: $samples"
