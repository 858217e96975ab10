#!/usr/bin/env bash
# Installs the Debian 12 packages metamorph builds, tests and runs with. Idempotent; quiet when
# everything is already there.
set -euo pipefail
packages=(build-essential cmake pkg-config git libgtest-dev
          libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libboost-program-options-dev
          nlohmann-json3-dev libopenblas-dev libsentencepiece-dev sentencepiece fortunes
          python3-torch python3-numpy python3-h5py python3-matplotlib)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" < /dev/null > /tmp/metamorph-apt.log 2>&1 ||
    { tail -20 /tmp/metamorph-apt.log; exit 1; }
fi
