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

// The Fletcher32 of a chunk taken in consecutive pieces, some only summed, some also copied (the
// rows of a chunk that a shard wants go straight to the tensor, the others are only checked).
class Fletcher32 {
 public:
  explicit Fletcher32(ChecksumKernel kernel = ChecksumKernel::fastest);
  // Adds the next `bytes` of the chunk. Only the last piece may have an odd length.
  void add(const void* data, std::size_t bytes);
  // The same, copying them to `dst` (not overlapping `src`) in the same pass; the sum is of the
  // bytes written. Large copies to 32-byte aligned destinations bypass the cache.
  void add_copy(const void* src, void* dst, std::size_t bytes);
  // The checksum of the pieces so far, as HDF5's filter stores it.
  std::uint32_t value() const;

 private:
  void add_piece(const std::uint8_t* src, std::uint8_t* dst, std::size_t bytes);

  ChecksumKernel kernel_;
  std::uint64_t sum1_ = 0;  // HDF5's two sums, as residues modulo 65535
  std::uint64_t sum2_ = 0;
  bool nonzero_ = false;  // a byte so far is not 0 (then a residue of 0 reads 0xffff)
  bool odd_ = false;      // a piece of odd length came: it was the last
};

// The checksum HDF5's filter stores after a chunk of `bytes` bytes (H5_checksum_fletcher32).
std::uint32_t fletcher32(const void* data, std::size_t bytes,
                         ChecksumKernel kernel = ChecksumKernel::fastest);

// Copies `bytes` from `src` to `dst` (not overlapping) and returns fletcher32 of the bytes
// written, in one pass (Fletcher32::add_copy).
std::uint32_t fletcher32_copy(const void* src, void* dst, std::size_t bytes,
                              ChecksumKernel kernel = ChecksumKernel::fastest);

}  // namespace metamorph::checkpoint
