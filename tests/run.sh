#!/usr/bin/env bash
# README command 2: installs what is missing, builds with warnings as errors, runs every test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
t0=$(date +%s)
launch/install-deps.sh
t1=$(date +%s)
launch/build.sh -DMETAMORPH_WERROR=ON
t2=$(date +%s)
status=0
(cd build && ctest --output-on-failure -j"$(nproc)" "$@") || status=$?
t3=$(date +%s)
echo "time: apt $((t1 - t0))s, build $((t2 - t1))s, tests $((t3 - t2))s"
exit $status
