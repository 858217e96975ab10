#!/bin/bash
# The eight-GPU issue's run on every GPU of the machine (8, or its 4-GPU half; 2 rehearses it),
# from the repository root, with `metamorph` bundled in .rt/ (or $1):
#   1. calibration: `metamorph bench calibrate` over all GPUs (GEMMs, attention, NCCL
#      collectives), which the planner then reads (CAL=FILE uses a given calibration instead);
#   2. the plan: `metamorph plan` for MODEL (configs/mixtral-a1b.json: 8 experts top-2, 3.1B
#      parameters, 1B active) on N GPUs at seq SEQ, global batch GLOBAL; of the layouts the
#      runtime executes, the best and two it ranks lower, one with more TP and one with more PP,
#      together covering TP, PP, EP and DP (tests/gpu/choose_planned_layouts.py); each written as
#      a plan file by `plan --top 1 --out`;
#   3. each plan trained STEPS steps from the same seed (`train --plan`), timed on the steps after
#      WARM; the best one saves a checkpoint at step STEPS/2;
#   4. that checkpoint resumed under the "more_pp" layout for the remaining steps;
#   5. layout invariance: every run's loss curve (and the resumed one joined to the best's first
#      half) within TOL of the best's;
#   6. scaling (SCALE_GPUS, e.g. "1 2"): the planner's best layout for 1 and 2 GPUs of the same
#      model, global batch GLOBAL x GPUS / N, SCALE_STEPS steps; tokens/s per GPU against them.
# LR (1e-4) and WARMUP (2 steps) set the schedule; ONLY and NOISE: see below. MAIN=0 skips 1-5. Out ($OUT, at most 8 files): nvidia_smi.txt, planned.log (every command's
# output), summary.txt, report.txt (planned_layouts_report.py: predicted against measured step
# time and peak memory, MFU, ranking, scaling), plans.tar.gz (calibration, plan JSON and plan
# files, every run's metrics). DEVICE=cpu rehearses it on CPUs (mpirun --oversubscribe).
set -o pipefail
rt=${1:-.rt}
[ -f "$rt/env.sh" ] && source "$rt/env.sh"
export PMIX_MCA_pcompress_base_silence_warning=1 PMIX_MCA_mca_base_component_show_load_errors=0
export NCCL_DEBUG=WARN OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=${OUT:-/tmp}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN:-$rt/metamorph}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
device=${DEVICE:-cuda}
model=${MODEL:-$root/configs/mixtral-a1b.json}
seq=${SEQ:-4096}
steps=${STEPS:-60}
warm=${WARM:-10}
tol=${TOL:-0.03}
summary=$out/summary.txt
log=$out/planned.log
: >"$summary"
: >"$log"
status=0

if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia_smi.txt" 2>&1
  cat "$out/nvidia_smi.txt"
  gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
  kind=h100
  grep -q H200 "$out/nvidia_smi.txt" && kind=h200
  launcher=(mpirun --bind-to none)
else
  gpus=${GPUS:-4}
  kind=h100
  launcher=(mpirun --oversubscribe --bind-to none -x OMP_NUM_THREADS=1)
fi
global=${GLOBAL:-$((8 * gpus))}
echo "$gpus x $kind, model $model, seq $seq, global batch $global, $steps steps" | tee -a "$summary"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name: $*" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 </dev/null
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$summary"
  [ $rc -eq 0 ] || status=1
  return $rc
}
ranks_step() {  # ranks_step NAME SECONDS RANKS COMMAND...
  local name=$1 limit=$2 ranks=$3
  shift 3
  local run=()
  [ "$ranks" -gt 1 ] && run=("${launcher[@]}" -np "$ranks")
  step "$name" "$limit" "${run[@]}" "$@"
}

# A synthetic corpus (the device machine has no text corpus package), byte tokens.
python3 "$here/synthetic_corpus.py" "$work/corpus.txt" 1 5000 ${DOCS:-3000} 200 2000
step data 300 "$bin" data prepare --input "$work/corpus.txt" --tokenizer byte \
  --vocab "$(python3 -c "import json; print(json.load(open('$model'))['vocab_size'])")" \
  --output "$work/data" --validation-fraction 0

plan() {  # plan GPUS GLOBAL [flags]: metamorph plan for this machine with the calibration
  local n=$1 g=$2
  shift 2
  "$bin" plan --model "$model" --gpus "$n" --gpus-per-node "$gpus" --gpu "$kind" --seq "$seq" \
    --global-batch "$g" --accounting metamorph --calibration "$cal" "$@" 2>>"$log"
}
train() {  # train NAME RANKS PLAN-FILE [flags]
  local name=$1 ranks=$2 planfile=$3
  shift 3
  ranks_step "$name" ${TRAIN_LIMIT:-400} "$ranks" "$bin" train --device "$device" \
    --plan "$planfile" --data "$work/data" --lr "${LR:-1e-4}" --warmup "${WARMUP:-2}" --seed 7 \
    --metrics "$work/$name.jsonl" "$@"
}

cal=${CAL:-$work/calibration.json}
if [ -z "${CAL:-}" ]; then
  ranks_step calibrate 200 "$gpus" "$bin" bench calibrate --device "$device" --model "$model" \
    --seq "$seq" --micro-batch ${CAL_MB:-2} --repeats 3 --largest ${CAL_LARGEST:-8192} --out "$cal" ||
    { cal=$root/configs/calibration-h200x2-metamorph.json; echo "calibration failed: using $cal" | tee -a "$summary"; }
fi
# DEADLINE (seconds into the script): no run starts after it, so that a device call's limit
# leaves time for the report.
in_time() {
  [ "$SECONDS" -lt "${DEADLINE:-1000000}" ] && return 0
  echo "$1: not started, $SECONDS s past the DEADLINE" | tee -a "$summary"
  status=1
  return 1
}

if [ "${MAIN:-1}" = 1 ]; then
  plan "$gpus" "$global" --top 1000 --json --no-save >"$work/plan_all.json"
  plan "$gpus" "$global" --top 12 --no-save >"$work/plan_table.txt"
  cat "$work/plan_table.txt" >>"$summary"
  python3 "$here/choose_planned_layouts.py" "$work/plan_all.json" >"$work/chosen.txt" 2>&1
  cat "$work/chosen.txt" | tee -a "$summary"
  half=$((steps / 2))
  # ONLY (names) trains only those of best, more_tp, more_pp; the resumption needs best and
  # more_pp.
  only() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
  resume=0
  only best && only more_pp && resume=1
  while read -r name rank layout flags; do
    only "$name" || continue
    # shellcheck disable=SC2086
    plan "$gpus" "$global" $flags --top 1 --out "$work/plan_$name.json" >/dev/null ||
      { echo "$name: plan failed" | tee -a "$summary"; status=1; continue; }
    in_time "$name" || continue
    save=()
    [ "$name" = best ] && [ $resume = 1 ] && save=(--save "$work/ckpt_best" --save-every "$half")
    train "$name" "$gpus" "$work/plan_$name.json" --steps "$steps" "${save[@]}"
  done <"$work/chosen.txt"
  # NOISE=1: the best plan again in the non-deterministic mode (float atomics in the attention
  # backward), which differs from the deterministic run only in rounding: how far two curves
  # drift apart from rounding alone, the yardstick for the layouts' differences.
  if [ "${NOISE:-0}" = 1 ] && [ -f "$work/plan_best.json" ] && in_time best_nondeterministic; then
    train best_nondeterministic "$gpus" "$work/plan_best.json" --steps "$steps" --nondeterministic
    python3 "$here/compare_loss_curves.py" "$tol" "$work/best.jsonl" \
      best_nondeterministic="$work/best_nondeterministic.jsonl" 2>&1 | tee -a "$summary"
  fi
  # The best layout's mid-run checkpoint continued under the more-PP layout.
  if [ $resume = 0 ]; then
    :
  elif ! in_time best_then_more_pp; then
    :
  elif [ -f "$work/plan_more_pp.json" ] && [ -d "$work/ckpt_best/step_$(printf %08d "$half")" ]; then
    train best_then_more_pp "$gpus" "$work/plan_more_pp.json" --steps "$steps" \
      --resume "$work/ckpt_best/step_$(printf %08d "$half")"
  else
    echo "best_then_more_pp: no checkpoint or plan to resume" | tee -a "$summary"
    status=1
  fi
  if [ $resume = 1 ]; then
    python3 "$here/compare_loss_curves.py" "$tol" "$work/best.jsonl" \
      more_tp="$work/more_tp.jsonl" more_pp="$work/more_pp.jsonl" \
      best_then_more_pp="$work/best.jsonl,$work/best_then_more_pp.jsonl" 2>&1 | tee -a "$summary"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  fi
fi

# Scaling: the same model on fewer GPUs, each with the planner's best layout for its count.
for n in ${SCALE_GPUS:-}; do
  g=$((global * n / gpus))
  in_time "scale$n" || continue
  plan "$n" "$g" --top 1 --out "$work/plan_scale$n.json" >/dev/null ||
    { echo "scale$n: plan failed" | tee -a "$summary"; status=1; continue; }
  train "scale$n" "$n" "$work/plan_scale$n.json" --steps ${SCALE_STEPS:-20}
done

python3 "$here/planned_layouts_report.py" "$work" "$model" "$gpus" "$warm" "$bin" "$kind" "$seq" \
  "$cal" >"$out/report.txt" 2>&1
cat "$out/report.txt" | tee -a "$summary"
# Small files only: with the 20-MB corpus in it the archive outlasted a device call's limit.
(cd "$work" && ls ./*.json ./*.jsonl ./chosen.txt ./plan_table.txt 2>/dev/null) >"$work/keep.txt"
tar czf "$out/plans.tar.gz" -C "$work" -T "$work/keep.txt" 2>/dev/null
[ -n "${KEEP:-}" ] || rm -rf "$work"
exit $status
