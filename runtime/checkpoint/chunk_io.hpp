#pragma once
// Fast path for the shard datasets. HDF5 runs its filters one chunk at a time under its global
// lock, so the Fletcher32 filter and the chunk-cache copies bound save and load at well under
// disk speed. Here the chunks (whole rows of the tensor, a few MiB each) are checksummed in
// parallel with a Fletcher32 identical to HDF5's filter (fletcher32.hpp), written with
// H5Dwrite_chunk, and read from a memory mapping at the addresses HDF5 reports, each chunk summed
// by the same pass that copies it into the tensor: the file is exactly what the filter would have
// written, so h5py and h5dump still verify it on their own reads.
#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph::checkpoint {

// Rows per chunk for a tensor of `shape` (chunks always span whole trailing dimensions).
std::int64_t chunk_rows(const Shape& shape, std::size_t element_bytes,
                        std::size_t target_bytes = std::size_t{4} << 20);

// Creation properties of a shard dataset: row chunks + the Fletcher32 filter.
void set_shard_layout(hid_t dcpl, const Shape& shape, std::size_t element_bytes);

// Writes all of `data` (contiguous, `shape`) into a dataset created with set_shard_layout.
// Throws InputError on an HDF5 failure.
// `scratch` is staging memory kept by the caller across datasets (no page faults per tensor).
void write_shard_chunks(hid_t dataset, const Shape& shape, std::size_t element_bytes,
                        const void* data, std::vector<std::byte>& scratch);

// Reads the box [start, start + count) of a dataset written by write_shard_chunks into `dst`
// (a contiguous array of `dst_shape`, box placed at `dst_start`), verifying every chunk it
// touches. Returns false when the dataset is not in that layout (the caller falls back to
// H5Dread); throws InputError naming the chunk on a checksum mismatch.
bool read_shard_box(hid_t dataset, const Shape& shape, std::size_t element_bytes,
                    const Shape& start, const Shape& count, void* dst, const Shape& dst_shape,
                    const Shape& dst_start, std::vector<std::byte>& scratch);

}  // namespace metamorph::checkpoint
