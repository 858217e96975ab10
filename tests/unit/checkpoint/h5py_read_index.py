"""Reads whole global tensors through a checkpoint's index.h5 virtual datasets with h5py and
compares them byte for byte with the expected tensors the C++ test wrote as raw files.

usage: h5py_read_index.py STEP_DIR EXPECTED_DIR
EXPECTED_DIR holds <dataset path with '/' replaced by '__'>.bin files of little-endian f32."""
import os
import sys

import h5py
import numpy as np

step_dir, expected_dir = sys.argv[1], sys.argv[2]
checked = 0
with h5py.File(os.path.join(step_dir, "index.h5"), "r") as index:
    assert index.attrs["format_version"] == 1, index.attrs["format_version"]
    for name in sorted(os.listdir(expected_dir)):
        path = "/" + name[: -len(".bin")].replace("__", "/")
        dataset = index[path]
        assert dataset.is_virtual, f"{path} is not a virtual dataset"
        assert dataset.attrs["dtype"].decode() == "f32", dataset.attrs["dtype"]
        got = dataset[...]
        want = np.fromfile(os.path.join(expected_dir, name), dtype="<f4").reshape(got.shape)
        assert tuple(dataset.attrs["global_shape"]) == got.shape, (path, got.shape)
        if got.tobytes() != want.tobytes():
            bad = np.argwhere(got != want)
            sys.exit(f"{path}: {len(bad)} elements differ, first at {bad[0].tolist()}")
        checked += 1
print(f"checked {checked} tensors")
