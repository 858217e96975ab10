"""Reads a Megatron MMIDIDX dataset with numpy, straight from the format description (independent
of metamorph's reader), and prints each document's tokens on one line."""
import struct
import sys

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}

prefix = sys.argv[1]
with open(prefix + ".idx", "rb") as f:
    idx = f.read()
assert idx[:9] == b"MMIDIDX\x00\x00", "bad magic"
(version,) = struct.unpack("<Q", idx[9:17])
assert version == 1
dtype = np.dtype(DTYPES[idx[17]])
sequences, document_entries = struct.unpack("<QQ", idx[18:34])
offset = 34
lengths = np.frombuffer(idx, dtype="<i4", count=sequences, offset=offset)
offset += lengths.nbytes
pointers = np.frombuffer(idx, dtype="<i8", count=sequences, offset=offset)
offset += pointers.nbytes
documents = np.frombuffer(idx, dtype="<i8", count=document_entries, offset=offset)
offset += documents.nbytes
assert offset == len(idx), "trailing bytes"
assert documents[0] == 0 and documents[-1] == sequences
bin_ = np.memmap(prefix + ".bin", dtype=dtype.newbyteorder("<"), mode="r")
for d in range(document_entries - 1):
    tokens = []
    for s in range(documents[d], documents[d + 1]):
        start = pointers[s] // dtype.itemsize
        tokens.extend(int(t) for t in bin_[start:start + lengths[s]])
    print(" ".join(str(t) for t in tokens))
