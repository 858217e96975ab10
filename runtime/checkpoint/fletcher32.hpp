#pragma once
// HDF5's Fletcher32 checksum (what H5Pset_fletcher32 appends to every chunk), bit for bit, fast
// enough to check chunks at memory speed, and fused with the copy that places a chunk's bytes in
// their tensor so that loading touches each byte once.
#include <cstddef>
#include <cstdint>

namespace metamorph::checkpoint {

// Which code computes the sums: the fastest this CPU runs (AVX2 where present), or one named
// (tests check each against HDF5).
enum class ChecksumKernel { fastest, portable, avx2 };
bool checksum_kernel_available(ChecksumKernel kernel);

// The checksum HDF5's filter stores after a chunk of `bytes` bytes (H5_checksum_fletcher32).
std::uint32_t fletcher32(const void* data, std::size_t bytes,
                         ChecksumKernel kernel = ChecksumKernel::fastest);

// Copies `bytes` from `src` to `dst` (not overlapping) and returns fletcher32 of them, in one
// pass: the sum is taken of the very bytes written to `dst`. Large copies to 32-byte aligned
// destinations bypass the cache (a loaded tensor is not read again soon).
std::uint32_t fletcher32_copy(const void* src, void* dst, std::size_t bytes,
                              ChecksumKernel kernel = ChecksumKernel::fastest);

}  // namespace metamorph::checkpoint
