#!/bin/bash
# make_bundle.sh BUILD_DIR DEST: what tests/gpu/run_on_gpu.sh needs on the GPU machine (the GPU
# binaries, the host libraries they load beyond glibc/libstdc++ and CUDA, the scripts), about
# 46 MB. CUDA's own libraries are on that machine already; cuDNN is not linked (env.sh points
# at the one in PyTorch's wheel).
set -euo pipefail
build=${1:?usage: make_bundle.sh BUILD_DIR DEST}
dest=${2:?usage: make_bundle.sh BUILD_DIR DEST}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$dest"
mkdir -p "$dest/lib"
bins=("$build/tests/gpu/gpu_ops_tests" "$build/tests/gpu/metamorph_gpu_bench" "$build/tests/gpu/cudnn_probe")
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libstdc\+\+|libgcc_s|libpthread|libdl\.so|librt\.so|libcuda|libcublas|libnccl|libnvidia)'
ldd "${bins[@]}" | awk '$3 ~ /^\// {print $1, $3}' | sort -u | while read -r name path; do
  [[ $name =~ $skip ]] && continue
  cp -L "$path" "$dest/lib/$name"
done
cp "${bins[@]}" "$here/run_on_gpu.sh" "$here/torch_baseline.py" "$dest/"
cat > "$dest/env.sh" <<'ENV'
_b=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LD_LIBRARY_PATH=$_b/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
# cuDNN (loaded by dlopen for the fused attention) from the Python packages where there is one
# (PyTorch's wheels bring it: nvidia/cudnn/lib or a CUDA-versioned folder under nvidia/).
_cudnn=$(python3 -c 'import glob, site
hits = [h for r in site.getsitepackages() for h in sorted(glob.glob(r + "/nvidia/**/libcudnn.so.9", recursive=True))]
print(hits[0] if hits else "")' 2>/dev/null)
if [ -n "$_cudnn" ]; then export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$_cudnn"); fi
ENV
du -sh "$dest"
