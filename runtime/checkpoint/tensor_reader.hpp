#pragma once
// Reads any block of a global tensor from the rank files that hold it: only the hyperslabs that
// intersect the block are read, each chunk's Fletcher32 checksum is verified by HDF5 on the way.
#include <cstddef>
#include <filesystem>
#include <map>
#include <vector>

#include "runtime/checkpoint/hdf5_util.hpp"
#include "runtime/checkpoint/layout.hpp"

namespace metamorph::checkpoint {

class TensorReader {
 public:
  explicit TensorReader(std::filesystem::path step_dir) : dir_(std::move(step_dir)) {}

  // Fills `dst` (contiguous, `shape`, element type `to`) with the tensor's elements
  // [offset, offset + shape), converting from the stored dtype if it differs. Throws InputError
  // naming the file and tensor (missing or damaged file, checksum mismatch, out-of-range block).
  void read(const TensorRecord& tensor, const Shape& offset, const Shape& shape, StoredDType to,
            void* dst);

  // The open rank file (cached); InputError names the file and the tensor that needed it.
  hid_t rank_file(int rank, const std::string& tensor);
  std::filesystem::path rank_path(int rank) const { return dir_ / rank_file_name(rank); }

 private:
  std::filesystem::path dir_;
  std::map<int, H5Handle> files_;
  std::vector<std::byte> scratch_;     // chunk staging, reused across reads
  std::vector<std::byte> converting_;  // stored elements awaiting a dtype conversion, reused
};

}  // namespace metamorph::checkpoint
