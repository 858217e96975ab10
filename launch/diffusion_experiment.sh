#!/usr/bin/env bash
# The block-diffusion experiment of docs/diffusion.md: continue the fortunes AR model as a
# diffusion LM (B = 4, 8, 16; uniform vs position-dependent masking; logit shift on/off at
# B = 8) and report the validation NLL bound next to the AR model's validation NLL, and
# decoding tokens per forward pass and tokens/s at thresholds 0.7/0.8/0.9/0.95 next to AR
# decoding of the same checkpoint in the same run, with sample texts.
#
# Usage: launch/diffusion_experiment.sh [STEPS]   (default 300 diffusion steps per variant)
# Writes runs/diffusion/report.md and samples.md. Needs the build (launch/build.sh) and the
# fortunes corpus; trains the AR model first if runs/diffusion/ar does not exist yet.
# Overrides (for a quick smoke run): MODEL=config.json AR_STEPS=N DATA=PREFIX OUT=DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mm=build/launch/metamorph
steps=${1:-300}
out=${OUT:-runs/diffusion}
model=${MODEL:-configs/demo-small.json}
data=${DATA:-data/fortunes}
mkdir -p "$out"
if [[ ! -f $data.idx ]]; then
  mkdir -p "$(dirname "$data")"
  $mm data prepare --input /usr/share/games/fortunes --tokenizer sentencepiece --vocab 2048 \
    --output "$data"
fi
common=(--data "$data" --seq 128 --micro-batch 8 --global-batch 16 --eval-batches 8)

last_val() {  # the last val_loss of a metrics file
  sed -n 's/.*"val_loss":\([0-9.eE+-]*\).*/\1/p' "$1" | tail -1
}

if [[ ! -d $out/ar ]]; then
  ar_steps=${AR_STEPS:-600}
  $mm train --model "$model" "${common[@]}" --steps "$ar_steps" --lr 3e-3 \
    --warmup $((ar_steps / 30)) --eval-every $((ar_steps / 6 > 0 ? ar_steps / 6 : 1)) \
    --save "$out/ar" --metrics "$out/ar.jsonl"
fi
ar_nll=$(last_val "$out/ar.jsonl")

variants=()
for b in 4 8 16; do
  for schedule in uniform position-dependent; do variants+=("$b $schedule logit-shift"); done
done
variants+=("8 uniform no-logit-shift")

prompt="Q: What is the difference between a computer and a"
report=$out/report.md
{
  echo "# Block diffusion on fortunes ($steps steps per variant, $(date -u +%F))"
  echo
  echo "AR model: validation NLL $ar_nll (nats/token)."
  echo
  echo "| B | schedule | shift | val NLL bound (step $steps) | threshold | tokens/pass | tokens/s | AR tokens/s |"
  echo "|---|---|---|---|---|---|---|---|"
} > "$report"
samples=$out/samples.md
echo "# Samples (prompt: \"$prompt\")" > "$samples"
ar_json=$($mm generate --ckpt "$out/ar" --prompt "$prompt" --max-tokens 64 --mode ar --json)
echo -e "\n## AR\n\n$(echo "$ar_json" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')" >> "$samples"

for v in "${variants[@]}"; do
  read -r b schedule shift <<< "$v"
  name="b${b}_${schedule}_${shift}"
  rm -rf "${out:?}/$name"
  $mm train --init "$out/ar" --objective diffusion --block-size "$b" --mask-schedule "$schedule" \
    --"$shift" "${common[@]}" --steps "$steps" --lr 1e-3 --warmup $((steps / 30)) \
    --eval-every $((steps / 6 > 0 ? steps / 6 : 1)) --save "$out/$name" \
    --metrics "$out/$name.jsonl"
  bound=$(last_val "$out/$name.jsonl")
  for threshold in 0.7 0.8 0.9 0.95; do
    # AR decoding of the same checkpoint in the same run, right before, as the speed baseline.
    ar=$($mm generate --ckpt "$out/$name" --prompt "$prompt" --max-tokens 64 --mode ar --json)
    dlm=$($mm generate --ckpt "$out/$name" --prompt "$prompt" --max-tokens 64 --mode diffusion \
      --threshold "$threshold" --json)
    /usr/bin/python3 - "$b" "$schedule" "$shift" "$bound" "$threshold" "$ar" "$dlm" >> "$report" <<'PY'
import json, sys
b, schedule, shift, bound, threshold, ar, dlm = sys.argv[1:]
ar, dlm = json.loads(ar), json.loads(dlm)
print(f"| {b} | {schedule} | {shift} | {bound} | {threshold} | {dlm['tokens_per_forward']:.2f} "
      f"| {dlm['tokens_per_s']:.0f} | {ar['tokens_per_s']:.0f} |")
PY
    echo -e "\n## B=$b $schedule $shift, threshold $threshold\n\n$(echo "$dlm" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')" >> "$samples"
  done
done
cat "$report"
echo "samples: $samples"
