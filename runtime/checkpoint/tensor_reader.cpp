#include "runtime/checkpoint/tensor_reader.hpp"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "runtime/checkpoint/chunk_io.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

hid_t TensorReader::rank_file(int rank, const std::string& tensor) {
  QuietHdf5Errors quiet;
  auto it = files_.find(rank);
  if (it != files_.end()) return it->second.get();
  const auto path = rank_path(rank);
  try {
    require(std::filesystem::exists(path), "the rank file is missing");
    it = files_.emplace(rank, open_file(path)).first;
  } catch (const InputError& e) {
    throw InputError(
        concat("checkpoint file ", path.string(), " (needed for tensor ", tensor, "): ", e.what()));
  }
  return it->second.get();
}

void TensorReader::read(const TensorRecord& t, const Shape& offset, const Shape& shape,
                        StoredDType to, void* dst) {
  QuietHdf5Errors quiet;
  const std::size_t rank = t.shape.size();
  require(offset.size() == rank && shape.size() == rank, "tensor ", t.name, ": the model holds a ",
          shape.size(), "-D shard, the checkpoint a ", rank, "-D tensor ", shape_string(t.shape));
  for (std::size_t d = 0; d < rank; ++d)
    require(offset[d] >= 0 && offset[d] + shape[d] <= t.shape[d], "tensor ", t.name,
            ": the model's shard ", shape_string(shape), " at ", shape_string(offset),
            " lies outside the checkpoint's global shape ", shape_string(t.shape));
  const auto numel = static_cast<std::size_t>(shape_numel(shape));
  if (numel == 0) return;
  void* target = dst;
  if (t.dtype != to) {
    // Kept across reads: a fresh buffer per tensor would be zero-filled and page-faulted anew.
    converting_.resize(std::max(converting_.size(), numel * stored_dtype_size(t.dtype)));
    target = converting_.data();
  }
  const hid_t type = stored_hdf5_type(t.dtype);
  const std::string path = dataset_path(t.name, t.kind);
  const auto mem_dims = to_hsize(shape);
  for (const auto& block : t.blocks) {
    std::vector<hsize_t> file_start(rank), mem_start(rank), count(rank);
    bool empty = false;
    for (std::size_t d = 0; d < rank; ++d) {
      const auto lo = std::max(offset[d], block.offset[d]);
      const auto hi = std::min(offset[d] + shape[d], block.offset[d] + block.shape[d]);
      if (hi <= lo) {
        empty = true;
        break;
      }
      file_start[d] = static_cast<hsize_t>(lo - block.offset[d]);
      mem_start[d] = static_cast<hsize_t>(lo - offset[d]);
      count[d] = static_cast<hsize_t>(hi - lo);
    }
    if (empty) continue;
    const hid_t file = rank_file(block.rank, t.name);
    try {
      const auto dataset = open_dataset(file, path);
      const Shape stored = dataset_shape(dataset.get());
      require(stored == block.shape, "dataset ", path, " has shape ", shape_string(stored),
              ", the index says ", shape_string(block.shape));
      H5Handle stored_type(H5Dget_type(dataset.get()), H5Tclose);
      require(H5Tequal(stored_type.get(), type) > 0, "dataset ", path, " does not hold ",
              stored_dtype_name(t.dtype), " elements");
      const Shape box_start(file_start.begin(), file_start.end());
      const Shape box(count.begin(), count.end());
      const Shape dst_start(mem_start.begin(), mem_start.end());
      if (read_shard_box(dataset.get(), block.shape, stored_dtype_size(t.dtype), box_start, box,
                         target, shape, dst_start, scratch_))
        continue;
      // Not our chunk layout (another writer): let HDF5 select and filter.
      H5Handle file_space(H5Dget_space(dataset.get()), H5Sclose);
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, file_start.data(), nullptr,
                          count.data(), nullptr);
      H5Handle mem_space(H5Screate_simple(static_cast<int>(rank), mem_dims.data(), nullptr),
                         H5Sclose);
      H5Sselect_hyperslab(mem_space.get(), H5S_SELECT_SET, mem_start.data(), nullptr, count.data(),
                          nullptr);
      require_h5(
          H5Dread(dataset.get(), type, mem_space.get(), file_space.get(), H5P_DEFAULT, target) >= 0,
          "cannot read ", path);
    } catch (const InputError& e) {
      throw InputError(concat("checkpoint file ", rank_path(block.rank).string(), ", tensor ",
                              t.name, " (", kind_name(t.kind), "): ", e.what()));
    }
  }
  if (t.dtype != to) convert_elements(t.dtype, converting_.data(), to, dst, numel);
}

}  // namespace metamorph::checkpoint
