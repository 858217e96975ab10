#!/bin/bash
# Runs on a one-GPU machine whose python3 has torch, transformers and safetensors, from the
# repository root, with the metamorph binary bundled in .rt/ (or $1):
#   1. when the bundle has gpu_train_tests: its GpuLogits tests (`logits --device cuda` against
#      --device cpu on Llama-, Qwen3- and Mixtral-shaped checkpoints, no transformers needed);
#   2. tests/gpu/hf_parity.py builds
# Llama, Qwen3 and Mixtral models from configs with random weights in transformers, saves them as
# safetensors, imports them with `metamorph ckpt import` and compares `metamorph logits` on cuda
# and cpu with transformers' float64 logits (and transformers' own fp32 and bf16 against the same
# reference). Exit 0 when both pass (hf_parity.py states its bounds and why).
# At most 6 files go to $OUT: nvidia_smi.txt, gpu_logits_tests.log, hf_parity.log (the table),
# hf_parity.json (every figure), commands.log (each metamorph command with its output),
# summary.txt (exit codes).
# Bundle (here): cmake --build build --target metamorph && ../shared/device/bundle-runtime .rt \
#   build/launch/metamorph build/tests/gpu/gpu_train_tests && cp build/launch/metamorph \
#   build/tests/gpu/gpu_train_tests .rt/      (gpu_train_tests is optional)
# Knobs: MODELS (llama,qwen3,mixtral), DEVICES (cuda,cpu), BATCH (4), SEQ (256).
set -o pipefail
rt=$(cd "${1:-.rt}" && pwd)
out=${OUT:-/tmp}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
summary=$out/summary.txt
: >"$summary"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia_smi.txt" 2>&1
cat "$out/nvidia_smi.txt"

# metamorph runs with the bundle's libraries; python3 keeps the machine's own environment (the
# bundle's LD_LIBRARY_PATH must not reach torch).
cat >"$work/metamorph" <<WRAP
#!/bin/bash
source "$rt/env.sh"
exec "$rt/metamorph" "\$@"
WRAP
chmod +x "$work/metamorph"
"$work/metamorph" version >>"$summary" 2>&1

tests_rc=0
if [[ -x "$rt/gpu_train_tests" ]]; then
  start=$SECONDS
  (source "$rt/env.sh" && timeout --kill-after=10 300 "$rt/gpu_train_tests" \
    --gtest_filter='*GpuLogits*' --gtest_brief=0) >"$out/gpu_logits_tests.log" 2>&1
  tests_rc=$?
  grep -E "rel_rms|OK|FAILED|Failure" "$out/gpu_logits_tests.log"
  echo "gpu_logits_tests: exit $tests_rc after $((SECONDS - start)) s (limit 300 s)" | tee -a "$summary"
fi

start=$SECONDS
PYTHONUNBUFFERED=1 timeout --kill-after=10 500 python3 "$here/hf_parity.py" \
  --metamorph "$work/metamorph" --work "$work/models" --json "$out/hf_parity.json" \
  --models "${MODELS:-llama,qwen3,mixtral}" --devices "${DEVICES:-cuda,cpu}" \
  --batch "${BATCH:-4}" --seq "${SEQ:-256}" >"$work/raw.log" 2>&1
rc=$?
# transformers' progress bars redraw with carriage returns: keep the rest.
tr '\r' '\n' <"$work/raw.log" | grep -v -E "^(Loading weights|Writing model)|^$" >"$out/hf_parity.log"
cat "$out/hf_parity.log"
echo "hf_parity: exit $rc after $((SECONDS - start)) s (limit 500 s)" | tee -a "$summary"
cp "$work/models/commands.log" "$out/commands.log" 2>/dev/null
grep -E "PASS|FAIL" "$out/hf_parity.log" >>"$summary"
rm -rf "$work"
[[ $rc -eq 0 ]] && rc=$tests_rc
exit $rc
