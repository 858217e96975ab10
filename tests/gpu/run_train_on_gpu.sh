#!/bin/bash
# Runs on a one-GPU machine, from the repository root, with the binaries bundled in .rt/ (or $1):
#   1. gpu_train_tests: `train --device cuda` against the CPU backend (50-step loss curves,
#      checkpoints moved between devices);
#   2. `metamorph train --device cuda` on configs/llama-1b.json (1.1B parameters, Llama shape) and
#      configs/mixtral-a1b.json (MoE, 8 experts top-2, about 1B active) for tokens/s, MFU and the
#      arena peak next to the planner's prediction (`metamorph plan --accounting metamorph`);
#   3. tests/gpu/torch_train_baseline.py: the same models in PyTorch (bf16 autocast, SDPA, fused
#      AdamW, torch.compile; Mixtral's grouped MoE) on the same card;
#   4. block diffusion (DIFFUSION=1, the default; DIFFUSION=only runs nothing else): an AR model
#      (configs/tiny-llama-10m.json, head_dim 64) trained 30 steps on the GPU, continued 50 steps
#      as a block-diffusion LM ([MASK] added, B = 16, position-dependent masks, an AR term) on the
#      GPU and on the CPU from that checkpoint with the same data and masks, every step's loss
#      within TOL (0.03, relative; tests/gpu/compare_loss_curves.py); then `metamorph generate`
#      from the GPU run's checkpoint, diffusion and AR decoding, and `metamorph eval` of it, on
#      the GPU and on the CPU.
# Every step runs under its own time limit, so a hang costs one step, not the run. At most 8 files
# go to $OUT: nvidia_smi.txt, gpu_train_tests.log, gpu_train_tests.json, three
# train_*_metrics.jsonl, diffusion.log, summary.txt (exit codes and the figures, including the
# logs' tails).
# Bundle (here): ../shared/device/bundle-runtime .rt build/launch/metamorph \
#   build/tests/gpu/gpu_train_tests && cp build/launch/metamorph build/tests/gpu/gpu_train_tests .rt/
# Knobs: SEQ (4096), MICRO_BATCH (2, the dense model's), GLOBAL_BATCH (8), STEPS (8; the first 3
# are warm-up), MODELS (lines of: name config micro-batch), TESTS (0: skip step 1), TIMERS (1: the
# metamorph runs with `train --timers`, their mean per region in the summary).
set -o pipefail
rt=${1:-.rt}
source "$rt/env.sh"
out=${OUT:-/tmp}
timers_flag=()
[ "${TIMERS:-0}" = 1 ] && timers_flag=(--timers)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
summary=$out/summary.txt
seq=${SEQ:-4096}
micro=${MICRO_BATCH:-2}
global=${GLOBAL_BATCH:-8}
steps=${STEPS:-8}
: >"$summary"

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit and records its exit code.
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$summary"
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total \
  --format=csv >"$out/nvidia_smi.txt" 2>&1
cat "$out/nvidia_smi.txt"

if [ "${DIFFUSION:-1}" != only ]; then
# 1. GPU against CPU (TESTS=0 skips it: the timings alone).
[ "${TESTS:-1}" = 0 ] || step gpu_train_tests 900 "$rt/gpu_train_tests" --gtest_brief=1 \
  --gtest_output=json:"$out/gpu_train_tests.json" >"$out/gpu_train_tests.log" 2>&1
tail -40 "$out/gpu_train_tests.log" 2>/dev/null
grep -E "loss step" "$out/gpu_train_tests.log" >>"$summary" 2>/dev/null

# 2. The 1B model on synthetic text (byte tokens; the model's vocabulary stays 32000).
python3 "$here/synthetic_corpus.py" "$work/corpus.txt" 0 5000 4000 200 2000
step data_prepare 300 "$rt/metamorph" data prepare --input "$work/corpus.txt" --tokenizer byte \
  --vocab 32000 --output "$work/data" --validation-fraction 0 >/dev/null 2>&1
# One model per line: name, config, micro-batch. The dense 1B and an MoE of about 1B active
# parameters (8 experts, top-2), each against PyTorch on the same card, and the planner's peak.
# A line with extra train flags (the dense model without determinism) runs metamorph only.
models=${MODELS:-"dense configs/llama-1b.json $micro
dense_nondeterministic configs/llama-1b.json $micro --nondeterministic
moe configs/mixtral-a1b.json 1"}
while read -r name config mb extra; do
  [ -n "$name" ] || continue
  # shellcheck disable=SC2086 # extra holds zero or more flags
  step "train_$name" 900 "$rt/metamorph" train --device cuda --model "$root/$config" \
    --data "$work/data" --seq "$seq" --micro-batch "$mb" --global-batch "$global" \
    --steps "$steps" --lr 1e-4 --metrics "$out/train_${name}_metrics.jsonl" "${timers_flag[@]}" $extra \
    >"$work/train_$name.log" 2>&1
  grep -v "^\[rank 0\]   " "$work/train_$name.log" | tail -5 | tee -a "$summary"
  # train --timers: the mean per region (TIMERS=1).
  sed -n '/timers: mean ms per step/,$p' "$work/train_$name.log" | grep -v "train [0-9]" |
    tee -a "$summary"
  if [ -n "$extra" ]; then
    python3 - "$out/train_${name}_metrics.jsonl" "$name" >>"$summary" 2>&1 <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{sys.argv[2]} metamorph: {statistics.median(r['tokens_per_s'] for r in rows[3:]):.0f} "
      f"tokens/s (median of {len(rows) - 3} steps)")
PY
    continue
  fi
  "$rt/metamorph" plan --model "$root/$config" --gpus 1 --gpu h100 --seq "$seq" \
    --global-batch "$global" --accounting metamorph --tp 1 --pp 1 --dp 1 --micro-batch "$mb" \
    --no-recompute --json --top 1 --no-save >"$work/plan_$name.json" 2>>"$work/train_$name.log"
  step "torch_$name" 900 python3 "$here/torch_train_baseline.py" "$root/$config" "$seq" "$mb" \
    "$global" "$steps" >"$work/torch_$name.log" 2>&1
  tail -3 "$work/torch_$name.log" | tee -a "$summary"
  GPU_SCRIPTS="$here" python3 - "$root/$config" "$out/train_${name}_metrics.jsonl" "$work/torch_$name.log" "$seq" \
    "$work/plan_$name.json" "$name" >>"$summary" 2>&1 <<'PY'
import json, os, statistics, sys
sys.path.insert(0, os.environ["GPU_SCRIPTS"])
from model_flops import active_parameters, flops_per_token as model_flops
cfg = json.load(open(sys.argv[1]))
seq, name = int(sys.argv[4]), sys.argv[6]
n = active_parameters(cfg)
flops_per_token = model_flops(cfg, seq)
def report(who, rates):
    if not rates:
        print(f"{name} {who}: no timed steps")
        return None
    tps = statistics.median(rates)
    print(f"{name} {who}: {tps:.0f} tokens/s, {tps * flops_per_token / 1e12:.1f} TFLOP/s, "
          f"MFU {100 * tps * flops_per_token / 989e12:.1f}% (median of {len(rates)} steps; "
          f"{n / 1e9:.3f}B active parameters, seq {seq})")
    return tps
ours = theirs = None
try:
    rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
    ours = report("metamorph", [r["tokens_per_s"] for r in rows[3:]])
    peak = max(r["peak_bytes"] for r in rows)
    m = json.load(open(sys.argv[5]))["candidates"][0]["memory_bytes"]
    predicted = m["total"] - m["workspace"]
    print(f"{name} metamorph: arena peak {peak / 2**30:.2f} GiB, planner {predicted / 2**30:.2f} "
          f"GiB ({100 * (predicted - peak) / peak:+.1f}%); losses "
          f"{[round(r['loss'], 3) for r in rows]}")
except Exception as e:
    print(f"{name} metamorph: no metrics: {e}")
try:
    lines = open(sys.argv[3]).read().splitlines()
    theirs = report("torch", [json.loads(l[5:])["tokens_per_s"] for l in lines if l.startswith("JSON ")][3:])
    print(f"{name} torch: " + "; ".join(l for l in lines if l.startswith(("peak", "torch.compile"))))
except Exception as e:
    print(f"{name} torch: no figures: {e}")
if ours and theirs:
    print(f"{name}: metamorph / torch tokens/s = {ours / theirs:.2f}")
PY
done <<<"$models"
fi

# 4. Block diffusion on the GPU against the CPU, and decoding on the GPU.
if [ "${DIFFUSION:-1}" != 0 ]; then
  dlog=$out/diffusion.log
  : >"$dlog"
  python3 "$here/synthetic_corpus.py" "$work/dcorpus.txt" 2 3000 2000 50 600
  step diffusion_data 300 "$rt/metamorph" data prepare --input "$work/dcorpus.txt" \
    --tokenizer byte --vocab 4096 --output "$work/ddata" --validation-fraction 0.02 >>"$dlog" 2>&1
  common=(--data "$work/ddata" --seq 128 --micro-batch 4 --global-batch 16 --lr 1e-3 --warmup 5
    --seed 7)
  step diffusion_ar 300 "$rt/metamorph" train --device cuda \
    --model "$root/configs/tiny-llama-10m.json" "${common[@]}" --steps 30 --save "$work/ar" \
    >>"$dlog" 2>&1
  # The CPU side is slow on the GPU machines (about 200 tokens/s with OpenBLAS on every core,
  # about 320 with 4 threads: 50 steps take 4-6 minutes); CPU_THREADS sets its threads.
  for dev in cuda cpu; do
    OMP_NUM_THREADS=${CPU_THREADS:-4} OPENBLAS_NUM_THREADS=${CPU_THREADS:-4} \
    step "diffusion_$dev" 600 "$rt/metamorph" train --device "$dev" --init "$work/ar" \
      --objective diffusion --block-size 16 --mask-schedule position-dependent --ar-weight 0.25 \
      "${common[@]}" --steps 50 --eval-every 25 --eval-batches 4 --save "$work/dlm_$dev" \
      --metrics "$work/dlm_$dev.jsonl" >>"$dlog" 2>&1
  done
  python3 "$here/compare_loss_curves.py" "${TOL:-0.03}" "$work/dlm_cpu.jsonl" \
    diffusion_gpu="$work/dlm_cuda.jsonl" 2>&1 | tee -a "$summary"
  python3 - "$work" <<'PY' 2>&1 | tee -a "$summary"
import json, sys
work = sys.argv[1]
for dev in ["cuda", "cpu"]:
    try:
        rows = [json.loads(l) for l in open(f"{work}/dlm_{dev}.jsonl") if l.strip()]
        val = [(r["step"], round(r["val_loss"], 4)) for r in rows if r.get("val_loss") is not None]
        tps = sorted(r["tokens_per_s"] for r in rows[3:])
        print(f"diffusion {dev}: loss step 1 / 10 / {rows[-1]['step']} {rows[0]['loss']:.4f} "
              f"{rows[9]['loss']:.4f} {rows[-1]['loss']:.4f}, validation NLL bound {val}, "
              f"median {tps[len(tps) // 2]:.0f} tokens/s")
    except Exception as e:
        print(f"diffusion {dev}: no metrics ({e})")
PY
  # The GPU run's checkpoint scored by `metamorph eval` (its NLL bound) on both devices.
  for dev in cuda cpu; do
    step "eval_$dev" 300 "$rt/metamorph" eval --device "$dev" --ckpt "$work/dlm_cuda" \
      --data "$work/ddata" --seq 128 --micro-batch 4 --batches 4 --json >"$work/eval.json" \
      2>>"$dlog"
    echo "eval --device $dev: $(head -n 1 "$work/eval.json")" | tee -a "$summary" >>"$dlog"
  done
  prompt="the quick brown fox jumps over"
  for dev in cuda cpu; do
    for mode in diffusion ar; do
      # The JSON line first, then step's exit line (also in the summary).
      step "generate_${mode}_$dev" 300 "$rt/metamorph" generate --device "$dev" \
        --ckpt "$work/dlm_cuda" --prompt "$prompt" --max-tokens 64 --mode "$mode" \
        --threshold 0.5 --json >"$work/generate.json" 2>>"$dlog"
      echo "generate --device $dev --mode $mode: $(head -n 1 "$work/generate.json")" |
        tee -a "$summary" >>"$dlog"
    done
  done
fi
cat "$summary"
rm -rf "$work"
