#!/usr/bin/env bash
# Checkpoint save/load throughput next to dd and cp of the same bytes on the same disk, in one
# run. usage: checkpoint_bench.sh METAMORPH_BINARY SCRATCH_DIR [GIGABYTES=2]
# dd and cp copy the checkpoint's own rank file (the same bytes). Save is timed to the commit
# (every file fsync'ed); dd uses conv=fsync and cp is followed by a sync of the copy, so all three
# measure bytes on disk. Load (which verifies every chunk's Fletcher32) and the dd read both read
# the file just written (page cache as the OS leaves it; dropping it needs root).
set -euo pipefail
binary=$1
scratch=$2
gigabytes=${3:-2}
mkdir -p "$scratch"
rm -rf "$scratch/ckpt" "$scratch/dd.bin" "$scratch/cp.bin"
now() { date +%s.%N; }
rate() { python3 -c "import sys; b, t = float(sys.argv[1]), float(sys.argv[2]); print(f'{b / t / 1e9:.3f} GB/s ({t:.2f} s)')" "$@"; }

result=$("$binary" ckpt bench "$scratch/ckpt" --gigabytes "$gigabytes")
bytes=$(python3 -c "import json, sys; print(int(json.loads(sys.argv[1])['bytes']))" "$result")
rank_file="$scratch/ckpt/step_00000001/rank_00000.h5"

start=$(now)
dd if="$rank_file" of="$scratch/dd.bin" bs=1M conv=fsync status=none
dd_write=$(python3 -c "print($(now) - $start)")
start=$(now)
dd if="$rank_file" of=/dev/null bs=1M status=none
dd_read=$(python3 -c "print($(now) - $start)")
start=$(now)
cp --reflink=never "$rank_file" "$scratch/cp.bin" && sync "$scratch/cp.bin"
cp_time=$(python3 -c "print($(now) - $start)")

echo "checkpoint: $result"
echo "bytes: $bytes"
echo "metamorph save: $(python3 -c "import json, sys; r = json.loads(sys.argv[1]); print(f\"{r['save_gb_per_s']:.3f} GB/s ({r['save_s']:.2f} s)\")" "$result")"
echo "dd write+fsync: $(rate "$bytes" "$dd_write")"
echo "cp+sync:        $(rate "$bytes" "$cp_time")"
echo "metamorph load: $(python3 -c "import json, sys; r = json.loads(sys.argv[1]); print(f\"{r['load_gb_per_s']:.3f} GB/s ({r['load_s']:.2f} s)\")" "$result")"
echo "dd read:        $(rate "$bytes" "$dd_read")"
rm -rf "$scratch/ckpt" "$scratch/dd.bin" "$scratch/cp.bin"
