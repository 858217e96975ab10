#!/usr/bin/env bash
# Checkpoint save/load throughput next to dd and cp of the same bytes on the same disk, in one
# run. usage: checkpoint_bench.sh METAMORPH_BINARY SCRATCH_DIR [GIGABYTES=2] [LOADS=3]
# dd and cp copy the checkpoint's own rank file (the same bytes). Save is timed to the commit
# (every file fsync'ed); dd uses conv=fsync and cp is followed by a sync of the copy, so all three
# measure bytes on disk. Load (which verifies every chunk's Fletcher32) and the dd read both read
# the file just written, LOADS times each, median reported: from the page cache as the OS leaves
# it, then once more each after dropping the file from the page cache (cold: from disk). "pread
# into tensors" reads the rank file into the loaded tensors' memory without any checksum: the copy
# every load makes, which dd's reads into one reused 1 MiB buffer do not.
set -euo pipefail
binary=$1
scratch=$2
gigabytes=${3:-2}
loads=${4:-3}
mkdir -p "$scratch"
rm -rf "$scratch/ckpt" "$scratch/dd.bin" "$scratch/cp.bin"
now() { date +%s.%N; }
rate() { python3 -c "import sys; b, t = float(sys.argv[1]), float(sys.argv[2]); print(f'{b / t / 1e9:.3f} GB/s ({t:.2f} s)')" "$@"; }
median() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
evict() { python3 -c "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)" "$1"; }
timed_read() {
  local start
  start=$(now)
  dd if="$1" of=/dev/null bs=1M status=none
  python3 -c "print($(now) - $start)"
}

result=$("$binary" ckpt bench "$scratch/ckpt" --gigabytes "$gigabytes" --loads "$loads" --cold-loads 1)
field() { python3 -c "import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$result" "$1"; }
bytes=$(python3 -c "print(int($(field bytes)))")
rank_file="$scratch/ckpt/step_00000001/rank_00000.h5"

start=$(now)
dd if="$rank_file" of="$scratch/dd.bin" bs=1M conv=fsync status=none
dd_write=$(python3 -c "print($(now) - $start)")
reads=()
for _ in $(seq "$loads"); do reads+=("$(timed_read "$rank_file")"); done
dd_read=$(median "${reads[@]}")
evict "$rank_file"
dd_cold_read=$(timed_read "$rank_file")
start=$(now)
cp --reflink=never "$rank_file" "$scratch/cp.bin" && sync "$scratch/cp.bin"
cp_time=$(python3 -c "print($(now) - $start)")

echo "checkpoint: $result"
echo "bytes: $bytes"
echo "metamorph save:      $(rate "$bytes" "$(field save_s)")"
echo "dd write+fsync:      $(rate "$bytes" "$dd_write")"
echo "cp+sync:             $(rate "$bytes" "$cp_time")"
echo "metamorph load:      $(rate "$bytes" "$(field load_s)") median of $loads"
echo "dd read:             $(rate "$bytes" "$dd_read") median of $loads"
echo "pread into tensors:  $(rate "$bytes" "$(field plain_read_s)") median of $loads (no checksum)"
echo "metamorph cold load: $(rate "$bytes" "$(field cold_load_s)")"
echo "dd cold read:        $(rate "$bytes" "$dd_cold_read")"
rm -rf "$scratch/ckpt" "$scratch/dd.bin" "$scratch/cp.bin"
