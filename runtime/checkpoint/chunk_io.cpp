#include "runtime/checkpoint/chunk_io.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/checkpoint/fletcher32.hpp"
#include "runtime/checkpoint/hdf5_util.hpp"
#include "runtime/checkpoint/mapped_range.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

namespace {

constexpr std::size_t kChecksumBytes = 4;
constexpr std::size_t kBatchBytes = std::size_t{128} << 20;  // chunks staged per HDF5 round

// Copies the box `count` from a row-major array `src` (shape src_shape, box at src_start) into
// `dst` (shape dst_shape, box at dst_start), one contiguous innermost run at a time.
void copy_box(const std::byte* src, const Shape& src_shape, const Shape& src_start, std::byte* dst,
              const Shape& dst_shape, const Shape& dst_start, const Shape& count,
              std::size_t element_bytes) {
  const std::size_t rank = count.size();
  const std::size_t run = static_cast<std::size_t>(count[rank - 1]) * element_bytes;
  std::vector<std::int64_t> index(rank, 0);
  const std::int64_t lines = shape_numel(count) / std::max<std::int64_t>(count[rank - 1], 1);
  for (std::int64_t line = 0; line < lines; ++line) {
    std::int64_t s = 0, d = 0;
    for (std::size_t k = 0; k < rank; ++k) {
      s = s * src_shape[k] + src_start[k] + index[k];
      d = d * dst_shape[k] + dst_start[k] + index[k];
    }
    std::memcpy(dst + static_cast<std::size_t>(d) * element_bytes,
                src + static_cast<std::size_t>(s) * element_bytes, run);
    for (std::size_t k = rank - 1; k-- > 0;) {
      if (++index[k] < count[k]) break;
      index[k] = 0;
    }
  }
}

}  // namespace

std::int64_t chunk_rows(const Shape& shape, std::size_t element_bytes, std::size_t target_bytes) {
  const std::int64_t rows = std::max<std::int64_t>(shape[0], 1);
  const auto row_bytes =
      static_cast<std::size_t>(shape_numel(shape) / std::max<std::int64_t>(shape[0], 1)) *
      element_bytes;
  const auto fit = static_cast<std::int64_t>(target_bytes / std::max<std::size_t>(row_bytes, 1));
  return std::clamp<std::int64_t>(fit, 1, rows);
}

void set_shard_layout(hid_t dcpl, const Shape& shape, std::size_t element_bytes) {
  std::vector<hsize_t> chunk(shape.begin(), shape.end());
  chunk[0] = static_cast<hsize_t>(chunk_rows(shape, element_bytes));
  H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
  H5Pset_fletcher32(dcpl);
}

void write_shard_chunks(hid_t dataset, const Shape& shape, std::size_t element_bytes,
                        const void* data, std::vector<std::byte>& buffer) {
  const std::int64_t rows = shape[0];
  const std::int64_t per_chunk = chunk_rows(shape, element_bytes);
  const std::size_t row_bytes =
      static_cast<std::size_t>(shape_numel(shape) / std::max<std::int64_t>(rows, 1)) *
      element_bytes;
  const std::size_t chunk_bytes = static_cast<std::size_t>(per_chunk) * row_bytes;
  const std::size_t stored = chunk_bytes + kChecksumBytes;
  const std::int64_t chunks = (rows + per_chunk - 1) / per_chunk;
  const std::int64_t batch =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(kBatchBytes / stored));
  buffer.resize(
      std::max(buffer.size(), static_cast<std::size_t>(std::min(batch, chunks)) * stored));
  const auto* src = static_cast<const std::byte*>(data);
  std::vector<hsize_t> offset(shape.size(), 0);
  for (std::int64_t first = 0; first < chunks; first += batch) {
    const std::int64_t count = std::min(batch, chunks - first);
    // Threads only pay off for a few chunks' worth of bytes; tiny tensors stay on this thread.
    const bool parallel = count > 1 && static_cast<std::size_t>(count) * chunk_bytes >= (8u << 20);
#pragma omp parallel for schedule(static) if (parallel)
    for (std::int64_t c = 0; c < count; ++c) {
      std::byte* out = buffer.data() + static_cast<std::size_t>(c) * stored;
      const std::int64_t row = (first + c) * per_chunk;
      const std::size_t bytes =
          static_cast<std::size_t>(std::min(per_chunk, rows - row)) * row_bytes;
      std::memcpy(out, src + static_cast<std::size_t>(row) * row_bytes, bytes);
      std::memset(out + bytes, 0, chunk_bytes - bytes);  // an edge chunk is stored whole
      const std::uint32_t sum = fletcher32(out, chunk_bytes);
      std::memcpy(out + chunk_bytes, &sum, kChecksumBytes);
    }
    for (std::int64_t c = 0; c < count; ++c) {
      offset[0] = static_cast<hsize_t>((first + c) * per_chunk);
      require_h5(H5Dwrite_chunk(dataset, H5P_DEFAULT, 0, offset.data(), stored,
                                buffer.data() + static_cast<std::size_t>(c) * stored) >= 0,
                 "cannot write the chunk at row ", offset[0]);
    }
  }
}

bool read_shard_box(hid_t dataset, const Shape& shape, std::size_t element_bytes,
                    const Shape& start, const Shape& count, void* dst, const Shape& dst_shape,
                    const Shape& dst_start, std::vector<std::byte>& buffer) {
  // Only the layout write_shard_chunks makes: row chunks with exactly the Fletcher32 filter.
  H5Handle dcpl(H5Dget_create_plist(dataset), H5Pclose);
  if (!dcpl.valid() || H5Pget_layout(dcpl.get()) != H5D_CHUNKED || H5Pget_nfilters(dcpl.get()) != 1)
    return false;
  unsigned flags = 0;
  std::size_t nelements = 0;
  unsigned filter_config = 0;
  if (H5Pget_filter2(dcpl.get(), 0, &flags, &nelements, nullptr, 0, nullptr, &filter_config) !=
      H5Z_FILTER_FLETCHER32)
    return false;
  std::vector<hsize_t> chunk(shape.size());
  if (H5Pget_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) !=
      static_cast<int>(shape.size()))
    return false;
  for (std::size_t d = 1; d < shape.size(); ++d)
    if (chunk[d] != static_cast<hsize_t>(shape[d])) return false;

  const auto per_chunk = static_cast<std::int64_t>(chunk[0]);
  const std::size_t row_bytes =
      static_cast<std::size_t>(shape_numel(shape) / std::max<std::int64_t>(shape[0], 1)) *
      element_bytes;
  const std::size_t chunk_bytes = static_cast<std::size_t>(per_chunk) * row_bytes;
  const std::size_t stored = chunk_bytes + kChecksumBytes;
  const std::int64_t first_chunk = start[0] / per_chunk;
  const std::int64_t last_chunk = (start[0] + count[0] - 1) / per_chunk;
  const std::int64_t chunks = last_chunk - first_chunk + 1;

  // Where each chunk lies in the file (HDF5 metadata, under its lock), then the chunks read from
  // a mapping of the file: no HDF5 lock, no chunk cache.
  std::vector<haddr_t> address(static_cast<std::size_t>(chunks));
  std::vector<hsize_t> offset(shape.size(), 0);
  for (std::int64_t c = 0; c < chunks; ++c) {
    offset[0] = static_cast<hsize_t>((first_chunk + c) * per_chunk);
    unsigned mask = 0;
    hsize_t size = 0;
    require_h5(H5Dget_chunk_info_by_coord(dataset, offset.data(), &mask,
                                          &address[static_cast<std::size_t>(c)], &size) >= 0,
               "cannot find the chunk at row ", offset[0]);
    require(size == stored && mask == 0, "the chunk at row ", offset[0], " holds ", size,
            " bytes (filter mask ", mask, "), expected ", stored, " (damaged file?)");
  }
  std::string file_name(
      static_cast<std::size_t>(std::max<ssize_t>(H5Fget_name(dataset, nullptr, 0), 0)), '\0');
  H5Fget_name(dataset, file_name.data(), file_name.size() + 1);
  const auto [lowest, highest] = std::minmax_element(address.begin(), address.end());
  const MappedRange file(file_name, *lowest, *highest + stored - *lowest);

  // A box of whole rows of a destination with the same row length: the rows it wants of each
  // chunk go straight to the tensor, in the pass that sums the chunk.
  bool whole_rows = true;
  for (std::size_t d = 1; d < shape.size(); ++d)
    whole_rows =
        whole_rows && count[d] == shape[d] && dst_shape[d] == shape[d] && dst_start[d] == 0;
  Shape chunk_dims = shape;
  chunk_dims[0] = per_chunk;
  auto* out = static_cast<std::byte*>(dst);
  if (!whole_rows) buffer.resize(std::max(buffer.size(), chunk_bytes));
  // One thread: the fused pass runs at the page cache's speed (docs/benchmarks.md), and a
  // parallel region per tensor stalls behind a descheduled thread on a busy machine.
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t chunk_row = (first_chunk + c) * per_chunk;
    const std::int64_t lo = std::max(start[0], chunk_row);
    const std::int64_t hi = std::min(start[0] + count[0], chunk_row + per_chunk);
    const std::byte* in_file = file.at(address[static_cast<std::size_t>(c)], stored);
    std::uint32_t stored_sum = 0;
    std::memcpy(&stored_sum, in_file + chunk_bytes, kChecksumBytes);
    Fletcher32 sum;
    if (whole_rows) {
      // Rows before the box, the box's rows (copied), rows after it (an edge chunk's padding).
      // Every piece but the last has an even length, as Fletcher32 needs: elements are 2 or 4
      // bytes.
      const auto skipped = static_cast<std::size_t>(lo - chunk_row) * row_bytes;
      const auto wanted = static_cast<std::size_t>(hi - lo) * row_bytes;
      sum.add(in_file, skipped);
      sum.add_copy(in_file + skipped,
                   out + static_cast<std::size_t>(dst_start[0] + lo - start[0]) * row_bytes,
                   wanted);
      sum.add(in_file + skipped + wanted, chunk_bytes - skipped - wanted);
    } else {
      sum.add_copy(in_file, buffer.data(), chunk_bytes);  // staged, then its columns taken
    }
    require(sum.value() == stored_sum,
            "data error detected by Fletcher32 checksum in the chunk at row ", chunk_row);
    if (whole_rows) continue;
    // The rows of this chunk the box wants, all of the box's trailing extent.
    Shape src_start = start, box = count, out_start = dst_start;
    src_start[0] = lo - chunk_row;
    box[0] = hi - lo;
    out_start[0] = dst_start[0] + (lo - start[0]);
    copy_box(buffer.data(), chunk_dims, src_start, out, dst_shape, out_start, box, element_bytes);
  }
  return true;
}

}  // namespace metamorph::checkpoint
