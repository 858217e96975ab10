#!/bin/bash
# Runs on a two-GPU machine, from the repository root, with `metamorph` bundled in .rt/ (or $1):
#   1. layout invariance: a small Llama (configs/tiny-llama-10m.json) trained 50 steps on one GPU,
#      then under dp2, tp2 and pp2 on two; every loss within TOL (relative) of the one-GPU curve;
#   2. resharding: the tp2 run's step-25 checkpoint resumed on one GPU, and the one-GPU run's
#      step-25 checkpoint resumed under pp2, both continuing the one-GPU curve within TOL; the
#      same for ZeRO-1 (dp2 --zero1: each replica keeps the fp32 masters and moments of its rows
#      only): its curve, its step-25 checkpoint resumed on one GPU, the one-GPU checkpoint
#      resumed under dp2 --zero1;
#   3. a killed rank: one of two ranks is killed mid-run; the job must end by itself, in bounded
#      time (METAMORPH_COMM_TIMEOUT plus start-up), with a non-zero exit;
#   4. bit-exact resumption on the same layout (one GPU, tp2, dp2 with ZeRO-1) from checkpoints
#      written in the background;
#   MoE (MOE=1): configs/tiny-moe.json under dp2, tp2, pp2, ep2 (--dp 2 --ep 2) and expert-TP
#      across replicas (--dp 2 --etp 2) and with whole experts over TP (--tp 2 --etp 1 --ep 2)
#      against one GPU over MOE_STEPS steps, and the ep2 run's mid-run checkpoint resumed on one
#      GPU;
#   4b. block diffusion under the layouts (DIFFUSION=1, needs step 1's checkpoint): the one-GPU
#      run's final checkpoint continued 30 steps as a block-diffusion LM on one GPU and under dp2,
#      tp2 and pp2 ([MASK] makes the vocabulary 4097, so the tp2 split is uneven, 2049 + 2048);
#      every loss within TOL of the one-GPU curve;
#   5. scaling (SCALING=1; LAYOUTS=0 skips 1-4): configs/llama-1b.json at seq SEQ on one GPU and under dp2, tp2, pp2,
#      tokens/s per GPU (median after 3 warm-up steps), and the cost of a checkpoint every 10 steps
#      (DENSE_SCALING=0 skips these); the peak memory of dp2 with and without ZeRO-1 against the
#      planner's prediction;
#      EP scaling (EP_SCALING=1): configs/mixtral-a1b.json (1B active of 3.1B) on one GPU and
#      under --dp 2 --ep 2, tokens/s per GPU at micro-batch 1 and 2, with the router's own
#      routing and with --moe-force-balance (the *_bal runs: balanced expert load); the same
#      model under tp2 (with and without interleaved pairs), and balanced under dp2 and pp2 and
#      under tp2 with whole experts over the TP group (--etp 1 --ep 2, with and without pairs);
#      balanced on one GPU and under tp2 with the experts' GEMMs on one stream (*_bal_k1:
#      --expert-streams 1) against the default four.
# At most 8 files go to $OUT: nvidia_smi.txt, layouts.log, summary.txt, scaling.log,
# metrics.tar.gz (every run's metrics). Knobs: TOL (0.03), STEPS (50), MOE_STEPS (STEPS),
# SEQ (4096), SCALE_STEPS (8), SCALING_RUNS (only these scaling runs, e.g. "gpu1 tp2 moe_ep2"),
# TIMERS (1: the scaling runs with `train --timers`, rank 0's mean per region in layouts.log),
# PROFILE (1: nsys kernel times of the 1B model on one GPU and under tp2), LAYOUT_RUNS (only these
# small runs), KILL (0: skip the killed-rank test).
set -o pipefail
rt=${1:-.rt}
source "$rt/env.sh"
export PMIX_MCA_pcompress_base_silence_warning=1 PMIX_MCA_mca_base_component_show_load_errors=0
export NCCL_DEBUG=WARN OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=${OUT:-/tmp}
timers_flag=()
[ "${TIMERS:-0}" = 1 ] && timers_flag=(--timers)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$rt/metamorph
work=$(mktemp -d)
summary=$out/summary.txt
log=$out/layouts.log
tol=${TOL:-0.03}
steps=${STEPS:-50}
half=$((steps / 2))
: >"$summary"
: >"$log"
status=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$summary"
  [ $rc -eq 0 ] || status=1
  return $rc
}

# ranks_step NAME SECONDS RANKS COMMAND...: step, under mpirun when RANKS > 1.
ranks_step() {
  local name=$1 limit=$2 ranks=$3
  shift 3
  local launcher=()
  [ "$ranks" -gt 1 ] && launcher=(mpirun -np "$ranks" --bind-to none)
  step "$name" "$limit" "${launcher[@]}" "$@"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia_smi.txt" 2>&1
cat "$out/nvidia_smi.txt"

# A synthetic corpus (the device machine has no fortunes package), byte tokens.
python3 "$here/synthetic_corpus.py" "$work/corpus.txt" 0 3000 3000 50 600
step data_prepare 300 "$bin" data prepare --input "$work/corpus.txt" --tokenizer byte \
  --vocab 4096 --output "$work/data" --validation-fraction 0

# LAYOUT_RUNS (names, space-separated) keeps only those of the small runs (layouts, MoE,
# diffusion), to fit a shorter device call; comparisons then report the missing ones.
wanted() { [ -z "${LAYOUT_RUNS:-}" ] || [[ " $LAYOUT_RUNS " == *" $1 "* ]]; }

if [ "${LAYOUTS:-1}" = 1 ]; then
small() {  # small NAME RANKS [train flags...]; --resume replaces the fresh model
  local name=$1 ranks=$2
  wanted "$name" || return 0
  shift 2
  local from=(--model "$root/configs/tiny-llama-10m.json")
  [[ " $* " == *" --resume "* ]] && from=()
  ranks_step "$name" 300 "$ranks" "$bin" train --device cuda "${from[@]}" \
    --data "$work/data" --seq 256 --micro-batch 4 --global-batch 16 --steps "$steps" --lr 1e-3 \
    --warmup 5 --seed 7 --metrics "$work/$name.jsonl" "$@"
}

# 1 + 2. Layouts and checkpoints moved between them.
small gpu1 1 --save "$work/ckpt1" --save-every "$half"
small dp2 2 --dp 2
small tp2 2 --tp 2 --save "$work/ckpt_tp2" --save-every "$half"
small pp2 2 --pp 2
small dp2_zero1 2 --dp 2 --zero1 --save "$work/ckpt_z1" --save-every "$half"
small tp2_to_gpu1 1 --resume "$work/ckpt_tp2/step_$(printf %08d "$half")"
# Same-layout resumption (the step-25 checkpoints were written in the background): bit-exact.
small gpu1_resumed 1 --resume "$work/ckpt1/step_$(printf %08d "$half")"
small tp2_resumed 2 --tp 2 --resume "$work/ckpt_tp2/step_$(printf %08d "$half")"
small gpu1_to_pp2 2 --pp 2 --resume "$work/ckpt1/step_$(printf %08d "$half")"
small dp2_zero1_to_gpu1 1 --resume "$work/ckpt_z1/step_$(printf %08d "$half")"
small dp2_zero1_resumed 2 --dp 2 --zero1 --resume "$work/ckpt_z1/step_$(printf %08d "$half")"
small gpu1_to_dp2_zero1 2 --dp 2 --zero1 --resume "$work/ckpt1/step_$(printf %08d "$half")"
python3 "$here/compare_loss_curves.py" "$tol" "$work/gpu1.jsonl" dp2="$work/dp2.jsonl" \
  tp2="$work/tp2.jsonl" pp2="$work/pp2.jsonl" \
  tp2_then_gpu1="$work/tp2.jsonl,$work/tp2_to_gpu1.jsonl" \
  gpu1_then_pp2="$work/gpu1.jsonl,$work/gpu1_to_pp2.jsonl" dp2_zero1="$work/dp2_zero1.jsonl" \
  dp2_zero1_then_gpu1="$work/dp2_zero1.jsonl,$work/dp2_zero1_to_gpu1.jsonl" \
  gpu1_then_dp2_zero1="$work/gpu1.jsonl,$work/gpu1_to_dp2_zero1.jsonl" 2>&1 | tee -a "$summary"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# The resumed runs only: their first steps must continue the reference's curve.
python3 - "$work" "$half" <<'PY' | tee -a "$summary"
import json, sys
work, half = sys.argv[1], int(sys.argv[2])
ref = {r["step"]: r["loss"] for r in map(json.loads, open(f"{work}/gpu1.jsonl")) }
for name in ["tp2_to_gpu1", "gpu1_to_pp2", "dp2_zero1_to_gpu1", "gpu1_to_dp2_zero1"]:
    try:
        rows = [json.loads(l) for l in open(f"{work}/{name}.jsonl") if l.strip()]
        print(f"{name}: first step {rows[0]['step']} loss {rows[0]['loss']:.4f} "
              f"(one GPU straight: {ref.get(rows[0]['step'], float('nan')):.4f})")
    except Exception as e:
        print(f"{name}: no metrics ({e})")
PY

python3 - "$work" <<'PY' | tee -a "$summary"
import json, sys
work = sys.argv[1]
def losses(name):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{work}/{name}.jsonl"))}
bad = False
for straight, resumed in [("gpu1", "gpu1_resumed"), ("tp2", "tp2_resumed"),
                          ("dp2_zero1", "dp2_zero1_resumed")]:
    try:
        a, b = losses(straight), losses(resumed)
        differ = [s for s in b if a.get(s) != b[s]]
        print(f"{resumed}: steps {min(b)}..{max(b)}, {len(differ)} losses differ in any bit from "
              f"the uninterrupted {straight} run" + (f" (first: step {differ[0]})" if differ else ""))
        bad |= bool(differ)
    except Exception as e:
        print(f"{resumed}: no metrics ({e})")
        bad = True
sys.exit(1 if bad else 0)
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# 3. A rank killed mid-run (KILL=0 skips it).
if [ "${KILL:-1}" = 1 ]; then
export METAMORPH_COMM_TIMEOUT=30
start=$SECONDS
timeout --kill-after=10 240 mpirun -np 2 --bind-to none "$bin" train --device cuda \
  --model "$root/configs/tiny-llama-10m.json" --data "$work/data" --seq 256 --micro-batch 4 \
  --global-batch 16 --steps 100000 --dp 2 >"$work/kill.log" 2>&1 &
job=$!
sleep 25
victim=$(pgrep -f "metamorph train --device cuda" | sort -n | tail -1)
[ -n "$victim" ] && kill -9 "$victim"
killed_at=$SECONDS
wait "$job"
rc=$?
echo "killed rank (pid $victim): the job ended with exit $rc, $((SECONDS - killed_at)) s after the kill" | tee -a "$summary"
tail -5 "$work/kill.log" >>"$log"
# mpirun reports the killed rank's status (137) itself; the outer timeout would fire only after
# 240 s, which the elapsed time tells apart.
{ [ -n "$victim" ] && [ $rc -ne 0 ] && [ $((SECONDS - killed_at)) -lt 120 ]; } || status=1
unset METAMORPH_COMM_TIMEOUT
fi

fi

# MoE (configs/tiny-moe.json: 8 experts top-2, a shared expert) under dp2, tp2, pp2 and ep2
# (--dp 2 --ep 2: each rank holds 4 of the 8 experts of every layer, the dense part is
# data-parallel, routed rows cross over NCCL's all-to-all-v) against one GPU over MOE_STEPS
# steps; the ep2 run's mid-run checkpoint resumed on one GPU must continue the one-GPU curve.
if [ "${MOE:-1}" = 1 ]; then
  moe_steps=${MOE_STEPS:-$steps}
  moe_half=$((moe_steps / 2))
  step data_moe 300 "$bin" data prepare --input "$work/corpus.txt" --tokenizer byte \
    --vocab 2048 --output "$work/data_moe" --validation-fraction 0
  moe() {  # moe NAME RANKS [train flags...]; --resume replaces the fresh model
    local name=$1 ranks=$2
    wanted "$name" || return 0
    shift 2
    local from=(--model "$root/configs/tiny-moe.json")
    [[ " $* " == *" --resume "* ]] && from=()
    ranks_step "$name" 300 "$ranks" "$bin" train --device cuda "${from[@]}" \
      --data "$work/data_moe" --seq 128 --micro-batch 4 --global-batch 16 --steps "$moe_steps" \
      --lr 1e-3 --warmup 5 --seed 7 --metrics "$work/$name.jsonl" "$@"
  }
  moe moe_gpu1 1
  moe moe_dp2 2 --dp 2
  moe moe_tp2 2 --tp 2
  moe moe_pp2 2 --pp 2
  moe moe_ep2 2 --dp 2 --ep 2 --save "$work/ckpt_moe_ep2" --save-every "$moe_half"
  moe moe_ep2_to_gpu1 1 --resume "$work/ckpt_moe_ep2/step_$(printf %08d "$moe_half")"
  # Expert-TP across the two replicas (each expert's FFN split in two, the replicas' rows gathered
  # and the partial outputs summed through the exchange).
  moe moe_etp2 2 --dp 2 --etp 2
  # Whole experts over the TP group (each GPU runs its half of the experts on its segment of the
  # routed rows; the TP all-reduce sums the partial outputs).
  moe moe_tp2_ep2 2 --tp 2 --etp 1 --ep 2
  python3 "$here/compare_loss_curves.py" "$tol" "$work/moe_gpu1.jsonl" moe_dp2="$work/moe_dp2.jsonl" \
    moe_tp2="$work/moe_tp2.jsonl" moe_pp2="$work/moe_pp2.jsonl" moe_ep2="$work/moe_ep2.jsonl" \
    moe_ep2_then_gpu1="$work/moe_ep2.jsonl,$work/moe_ep2_to_gpu1.jsonl" \
    moe_etp2="$work/moe_etp2.jsonl" moe_tp2_ep2="$work/moe_tp2_ep2.jsonl" 2>&1 | tee -a "$summary"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

# 4b. Block diffusion from the one-GPU AR checkpoint: B = 16, position-dependent masks, an AR
# term (a second, causal pass per micro-batch through the same schedule).
if [ "${DIFFUSION:-1}" = 1 ] && [ -f "$work/ckpt1/latest" ]; then
  dlm() {  # dlm NAME RANKS [train flags...]
    local name=$1 ranks=$2
    wanted "$name" || return 0
    shift 2
    ranks_step "$name" 300 "$ranks" "$bin" train --device cuda --init "$work/ckpt1" \
      --objective diffusion --block-size 16 --mask-schedule position-dependent --ar-weight 0.25 \
      --data "$work/data" --seq 256 --micro-batch 4 --global-batch 16 --steps 30 --lr 1e-3 \
      --warmup 5 --seed 7 --metrics "$work/$name.jsonl" "$@"
  }
  dlm dlm_gpu1 1
  dlm dlm_dp2 2 --dp 2
  dlm dlm_tp2 2 --tp 2
  dlm dlm_pp2 2 --pp 2
  python3 "$here/compare_loss_curves.py" "$tol" "$work/dlm_gpu1.jsonl" dlm_dp2="$work/dlm_dp2.jsonl" \
    dlm_tp2="$work/dlm_tp2.jsonl" dlm_pp2="$work/dlm_pp2.jsonl" 2>&1 | tee -a "$summary"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

# 5. Scaling of the 1B model (and of the MoE with ~1B active parameters under EP).
if [ "${SCALING:-1}" = 1 ]; then
  seq=${SEQ:-4096}
  ssteps=${SCALE_STEPS:-8}
  python3 "$here/synthetic_corpus.py" "$work/corpus1b.txt" 1 5000 3000 200 2000
  step data_1b 300 "$bin" data prepare --input "$work/corpus1b.txt" --tokenizer byte --vocab 32000 \
    --output "$work/data1b" --validation-fraction 0
  # SCALING_RUNS (names, space-separated) keeps only those runs, to fit a shorter device call.
  selected() { [ -z "${SCALING_RUNS:-}" ] || [[ " $SCALING_RUNS " == *" $1 "* ]]; }
  big() {  # big NAME RANKS MICRO GLOBAL [flags]
    local name=$1 ranks=$2 micro=$3 global=$4
    selected "$name" || return 0
    shift 4
    local steps_flag=(--steps "$ssteps")
    [[ " $* " == *" --steps "* ]] && steps_flag=()
    ranks_step "scale_$name" 400 "$ranks" "$bin" train --device cuda \
      --model "$root/configs/llama-1b.json" --data "$work/data1b" --seq "$seq" \
      --micro-batch "$micro" --global-batch "$global" "${steps_flag[@]}" --lr 1e-4 \
      --metrics "$work/scale_$name.jsonl" "${timers_flag[@]}" "$@"
  }
  # Tokens/s per GPU of every run against the one-GPU run at the same micro-batch (and the best
  # one-GPU run of its group). Arguments: NAME:GPUS:REFERENCE.
  figures() {
    python3 - "$work" "$@" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], [a.split(":") for a in sys.argv[2:]]
figures = {}
for name, n, _ in runs:
    try:
        rows = [json.loads(l) for l in open(f"{work}/scale_{name}.jsonl") if l.strip()]
        tps = statistics.median(r["tokens_per_s"] for r in rows[3:])
        peak = max(r["peak_bytes"] for r in rows) / 2**30
        figures[name] = (int(n), tps, peak, len(rows) - 3)
    except Exception as e:
        print(f"{name}: no figures ({e})")
# Against the faster one-GPU micro-batch: each layout may pick its own.
base = max((tps for n, tps, _, _ in figures.values() if n == 1), default=None)
for name, _, ref in runs:
    if name not in figures:
        continue
    n, tps, peak, count = figures[name]
    same = figures.get(ref)
    vs_same = f"{100 * tps / n / same[1]:.1f}%" if same else "n/a"
    vs_best = f"{100 * tps / n / base:.1f}%" if base else "n/a"
    print(f"{name}: {tps:.0f} tokens/s, {tps / n:.0f} per GPU, scaling efficiency {vs_same} "
          f"against one GPU at the same micro-batch, {vs_best} against the best one-GPU run, "
          f"peak {peak:.1f} GiB (rank 0), median of {count} steps")
PY
  }
  : >"$out/scaling.log"
  if [ "${DENSE_SCALING:-1}" = 1 ]; then
  big gpu1 1 2 8
  big gpu1_mb4 1 4 8
  big dp2 2 2 16 --dp 2
  big dp2_mb4 2 4 16 --dp 2
  big dp2_zero1 2 2 16 --dp 2 --zero1
  # ZeRO-1's reduce-scatter after the backward and its all-gather after the update, unbucketed
  # (the runtime before they overlapped): the overlap's gain is dp2_zero1 against this.
  big dp2_zero1_serial 2 2 16 --dp 2 --zero1 --no-overlap-grad-reduce
  big tp2 2 2 8 --tp 2
  big tp2_mb4 2 4 8 --tp 2
  # Micro-batches in interleaved pairs: each one's TP all-reduces behind the other's compute.
  big tp2_pairs 2 2 8 --tp 2 --interleave-pairs
  big tp2_mb4_pairs 2 4 8 --tp 2 --interleave-pairs
  # Fewer NCCL channels (CTAs) for the all-reduces that now run beside the compute kernels.
  NCCL_MAX_NCHANNELS=8 big tp2_mb4_pairs_ch8 2 4 8 --tp 2 --interleave-pairs
  NCCL_MAX_NCHANNELS=4 big tp2_mb4_pairs_ch4 2 4 8 --tp 2 --interleave-pairs
  # Larger micro-batches, two per step for the pairs (global 16).
  big gpu1_mb8 1 8 16
  big tp2_mb8 2 8 16 --tp 2
  big tp2_mb8_pairs 2 8 16 --tp 2 --interleave-pairs
  big pp2 2 2 16 --pp 2
  big pp2_mb4 2 4 32 --pp 2
  # Checkpoint cost: a save every 10 steps written in the background (keeping the newest only).
  big save 1 2 8 --save "$work/ckpt1b" --save-every 10 --keep-last 1 --steps 25
  grep -hE "checkpoint of step|saved|checkpoints:" "$log" | sed 's/^.*\] //' | tail -8 | tee -a "$summary"
  figures gpu1:1:gpu1 gpu1_mb4:1:gpu1_mb4 dp2:2:gpu1 dp2_mb4:2:gpu1_mb4 dp2_zero1:2:gpu1 \
    dp2_zero1_serial:2:gpu1 tp2:2:gpu1 tp2_mb4:2:gpu1_mb4 tp2_pairs:2:gpu1 \
    tp2_mb4_pairs:2:gpu1_mb4 tp2_mb4_pairs_ch8:2:gpu1_mb4 tp2_mb4_pairs_ch4:2:gpu1_mb4 gpu1_mb8:1:gpu1_mb8 tp2_mb8:2:gpu1_mb8 tp2_mb8_pairs:2:gpu1_mb8 \
    pp2:2:gpu1 pp2_mb4:2:gpu1_mb4 2>&1 | tee -a "$out/scaling.log" | tee -a "$summary"
  # The interleaved pairs change no value: their losses must equal the plain schedule's bits.
  python3 - "$work" <<'PY' 2>&1 | tee -a "$out/scaling.log" | tee -a "$summary"
import json, sys
for plain, paired in (("tp2", "tp2_pairs"), ("tp2_mb4", "tp2_mb4_pairs"), ("tp2_mb8", "tp2_mb8_pairs")):
    try:
        a, b = ([json.loads(l)["loss"] for l in open(f"{sys.argv[1]}/scale_{n}.jsonl") if l.strip()]
                for n in (plain, paired))
        print(f"{paired} against {plain}: {sum(x == y for x, y in zip(a, b))} of {len(a)} losses "
              f"equal bit for bit")
    except Exception as e:
        print(f"{paired} against {plain}: no comparison ({e})")
PY
  python3 - "$work" <<'PY' 2>&1 | tee -a "$out/scaling.log" | tee -a "$summary"
import json, sys
try:
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/scale_save.jsonl") if l.strip()]
    print("save run, tokens/s by step:", [round(r["tokens_per_s"]) for r in rows])
except Exception as e:
    print(f"save run: no figures ({e})")
PY
  fi
  # Where tp2 loses against one GPU (PROFILE=1, needs nsys): GPU time per kernel over 4 steps of
  # each, rank 0, the 12 costliest kernels and the total.
  # PROFILE=ncu: the same breakdown from Nsight Compute (kernels serialised, NCCL's not timed):
  # ms per step by kernel family for each of PROFILE_RUNS ("name ranks [flags]" separated by ';',
  # default one GPU and tp2 pairs), rank 0, PROFILE_MODEL (configs/llama-1b.json) at micro-batch
  # PROFILE_MICRO (4), global batch PROFILE_GLOBAL (8), two steps each.
  if [ "${PROFILE:-0}" = ncu ]; then
    ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [ -n "$ncu_bin" ]; then
      tables=()
      IFS=';' read -r -a ncu_runs <<<"${PROFILE_RUNS:-gpu1_mb4 1;tp2_mb4_pairs 2 --tp 2 --interleave-pairs}"
      for run in "${ncu_runs[@]}"; do
        set -- $run
        name=$1 ranks=$2
        shift 2
        ranks_step "ncu_$name" 400 "$ranks" bash -c '"$@" >"$0.${OMPI_COMM_WORLD_RANK:-0}.csv"' \
          "$work/ncu_$name" "$ncu_bin" --csv --page raw --metrics gpu__time_duration.sum ${NCU_FLAGS:-} \
          --kernel-name 'regex:^(?!nccl)' "$bin" train --device cuda \
          --model "$root/${PROFILE_MODEL:-configs/llama-1b.json}" --data "$work/data1b" --seq "$seq" \
          --micro-batch "${PROFILE_MICRO:-4}" --global-batch "${PROFILE_GLOBAL:-8}" --steps 2 --lr 1e-4 "$@"
        tables+=("$name=$work/ncu_$name.0.csv")
      done
      python3 "$here/ncu_kernel_table.py" 2 "${tables[@]}" 2>&1 | tee -a "$out/scaling.log" | tee -a "$summary"
    else
      echo "profile: no ncu on this machine" | tee -a "$summary"
    fi
  fi
  if [ "${PROFILE:-0}" = 1 ]; then
    if command -v nsys >/dev/null; then
      for run in "gpu1 1" "tp2 2 --tp 2"; do
        set -- $run
        name=$1 ranks=$2
        shift 2
        ranks_step "profile_$name" 300 "$ranks" nsys profile --trace cuda,nvtx --force-overwrite true \
          -o "$work/prof_${name}_%q{OMPI_COMM_WORLD_RANK}" "$bin" train --device cuda \
          --model "$root/configs/llama-1b.json" --data "$work/data1b" --seq "$seq" --micro-batch 2 \
          --global-batch 8 --steps 4 --lr 1e-4 "$@"
        rep=$(ls "$work"/prof_"${name}"_*.nsys-rep 2>/dev/null | head -1)
        [ -n "$rep" ] || rep=$(ls "$work"/prof_"${name}"_*.qdrep 2>/dev/null | head -1)
        echo "== $name: GPU time by kernel (nsys, 4 steps, rank 0)" | tee -a "$summary"
        nsys stats --report cuda_gpu_kern_sum --format csv "$rep" 2>>"$log" |
          python3 -c '
import csv, sys
rows = [r for r in csv.reader(sys.stdin) if len(r) > 8]
head, body = rows[0], rows[1:]
t, n = head.index("Total Time (ns)"), head.index("Name")
total = sum(float(r[t]) for r in body)
print(f"total {total / 1e6:.1f} ms over {len(body)} kernels")
for r in sorted(body, key=lambda r: -float(r[t]))[:12]:
    print(f"{float(r[t]) / 1e6:9.1f} ms {100 * float(r[t]) / total:5.1f}%  {r[n][:110]}")
' 2>&1 | tee -a "$summary"
      done
    else
      echo "profile: no nsys on this machine" | tee -a "$summary"
    fi
  fi
  if [ "${DENSE_SCALING:-1}" = 1 ]; then
  # ZeRO-1's memory against the planner (metamorph accounting, less its workspace allowance: the
  # arena holds the 32 MiB cuBLASLt workspace only).
  for z in zero1 no-zero1; do
    "$bin" plan --model "$root/configs/llama-1b.json" --gpus 2 --gpu h100 --seq "$seq" \
      --global-batch 16 --accounting metamorph --tp 1 --pp 1 --dp 2 --micro-batch 2 \
      --no-recompute --$z --json --top 1 --no-save >"$work/plan_$z.json" 2>>"$log"
  done
  python3 - "$work" <<'PY' 2>&1 | tee -a "$summary"
import json, sys
work = sys.argv[1]
def predicted(z):
    m = json.load(open(f"{work}/plan_{z}.json"))["candidates"][0]["memory_bytes"]
    return (m["total"] - m["workspace"]) / 2**30
def measured(name):
    rows = [json.loads(l) for l in open(f"{work}/scale_{name}.jsonl") if l.strip()]
    return max(r["peak_bytes"] for r in rows) / 2**30
try:
    for name, z in [("dp2", "no-zero1"), ("dp2_zero1", "zero1")]:
        print(f"{name} (micro-batch 2): peak {measured(name):.2f} GiB (rank 0), planner "
              f"{predicted(z):.2f} GiB")
    print(f"ZeRO-1 saves {measured('dp2') - measured('dp2_zero1'):.2f} GiB of the peak, the "
          f"planner {predicted('no-zero1') - predicted('zero1'):.2f} GiB")
except Exception as e:
    print(f"ZeRO-1 memory: no figures ({e})")
PY
  fi
  # Expert parallelism: configs/mixtral-a1b.json (3.1B parameters, 1B active: 8 experts top-2,
  # 16 layers, hidden 2048) on one GPU (all 8 experts; `metamorph plan --accounting metamorph`
  # puts micro-batch 1 at 59.6 and 2 at 65.4 GiB) and under --dp 2 --ep 2 (4 experts per GPU,
  # 48 GiB at micro-batch 2 even with every row routed to one rank), per-GPU batch the same.
  if [ "${EP_SCALING:-1}" = 1 ]; then
    moe_big() {  # moe_big NAME RANKS MICRO GLOBAL [flags]
      local name=$1 ranks=$2 micro=$3 global=$4
      selected "$name" || return 0
      shift 4
      ranks_step "scale_$name" 600 "$ranks" "$bin" train --device cuda \
        --model "$root/configs/mixtral-a1b.json" --data "$work/data1b" --seq "$seq" \
        --micro-batch "$micro" --global-batch "$global" --steps "$ssteps" --lr 1e-4 \
        --metrics "$work/scale_$name.jsonl" "${timers_flag[@]}" "$@"
    }
    moe_big moe_gpu1 1 1 8
    moe_big moe_gpu1_mb2 1 2 8
    moe_big moe_ep2 2 1 16 --dp 2 --ep 2
    moe_big moe_ep2_mb2 2 2 16 --dp 2 --ep 2
    # Tensor parallelism of the MoE model (experts split like the dense MLP, --etp = --tp),
    # plain and in interleaved pairs, per-GPU batch halved as for the dense model.
    moe_big moe_tp2 2 1 8 --tp 2
    moe_big moe_tp2_pairs 2 1 8 --tp 2 --interleave-pairs
    moe_big moe_tp2_mb2 2 2 8 --tp 2
    moe_big moe_tp2_mb2_pairs 2 2 8 --tp 2 --interleave-pairs
    figures moe_gpu1:1:moe_gpu1 moe_gpu1_mb2:1:moe_gpu1_mb2 moe_ep2:2:moe_gpu1 \
      moe_ep2_mb2:2:moe_gpu1_mb2 moe_tp2:2:moe_gpu1 moe_tp2_pairs:2:moe_gpu1 \
      moe_tp2_mb2:2:moe_gpu1_mb2 moe_tp2_mb2_pairs:2:moe_gpu1_mb2 2>&1 |
      tee -a "$out/scaling.log" | tee -a "$summary"
    # The same at balanced load (--moe-force-balance, benchmark only: every expert gets the same
    # rows on every rank), so the exchange's scaling is measured apart from the untrained
    # router's skew; each against the one-GPU run with the same flag and micro-batch.
    moe_big moe_gpu1_bal 1 1 8 --moe-force-balance
    moe_big moe_gpu1_mb2_bal 1 2 8 --moe-force-balance
    moe_big moe_ep2_bal 2 1 16 --dp 2 --ep 2 --moe-force-balance
    moe_big moe_ep2_mb2_bal 2 2 16 --dp 2 --ep 2 --moe-force-balance
    # Data and pipeline parallelism of the MoE model at balanced load: dp2 replicates all 8
    # experts (the same per-GPU batch as one GPU), pp2 splits the 16 layers (8 micro-batches of
    # the one-GPU run's global batch, per-GPU tokens halved as for TP).
    moe_big moe_dp2_bal 2 1 16 --dp 2 --moe-force-balance
    moe_big moe_pp2_bal 2 1 8 --pp 2 --moe-force-balance
    moe_big moe_tp2_bal 2 1 8 --tp 2 --moe-force-balance
    moe_big moe_tp2_pairs_bal 2 1 8 --tp 2 --interleave-pairs --moe-force-balance
    # Whole experts over the TP group (4 of 8 per GPU at the full FFN width, no all-to-all)
    # instead of every expert split like the dense MLP.
    moe_big moe_tp2_ep_bal 2 1 8 --tp 2 --etp 1 --ep 2 --moe-force-balance
    moe_big moe_tp2_ep_pairs_bal 2 1 8 --tp 2 --etp 1 --ep 2 --interleave-pairs --moe-force-balance
    # One GPU and tp2 with the experts' GEMMs one after another on the compute stream
    # (--expert-streams 1, the backend before the expert streams; the runs above use 4), each
    # against the one-GPU run with the same setting: what the concurrent experts give TP.
    moe_big moe_gpu1_bal_k1 1 1 8 --moe-force-balance --expert-streams 1
    moe_big moe_tp2_bal_k1 2 1 8 --tp 2 --moe-force-balance --expert-streams 1
    figures moe_gpu1_bal:1:moe_gpu1_bal moe_gpu1_mb2_bal:1:moe_gpu1_mb2_bal \
      moe_ep2_bal:2:moe_gpu1_bal moe_ep2_mb2_bal:2:moe_gpu1_mb2_bal moe_dp2_bal:2:moe_gpu1_bal \
      moe_pp2_bal:2:moe_gpu1_bal moe_tp2_bal:2:moe_gpu1_bal moe_tp2_pairs_bal:2:moe_gpu1_bal \
      moe_tp2_ep_bal:2:moe_gpu1_bal moe_tp2_ep_pairs_bal:2:moe_gpu1_bal \
      moe_gpu1_bal_k1:1:moe_gpu1_bal_k1 moe_tp2_bal_k1:2:moe_gpu1_bal_k1 2>&1 |
      tee -a "$out/scaling.log" | tee -a "$summary"
  fi
fi
tar czf "$out/metrics.tar.gz" -C "$work" $(cd "$work" && ls *.jsonl 2>/dev/null) 2>/dev/null
cat "$summary"
rm -rf "$work"
exit $status
