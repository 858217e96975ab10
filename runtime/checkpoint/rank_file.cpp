#include "runtime/checkpoint/rank_file.hpp"

#include "runtime/checkpoint/chunk_io.hpp"
#include "runtime/checkpoint/file_sync.hpp"
#include "runtime/checkpoint/hdf5_util.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

namespace {

void write_shard(hid_t file, const ShardView& view, std::vector<std::byte>& scratch) {
  const ShardRecord& s = view.record;
  const std::string path = dataset_path(s.name, s.kind);
  require(!link_exists(file, path), "the shard is listed twice");
  require(!s.shape.empty(), "a shard must have at least one dimension");
  create_parent_groups(file, path);
  const auto dims = to_hsize(s.shape);
  H5Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  H5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const std::size_t element_bytes = stored_dtype_size(s.dtype);
  if (shape_numel(s.shape) > 0) set_shard_layout(dcpl.get(), s.shape, element_bytes);
  const hid_t type = stored_hdf5_type(s.dtype);
  H5Handle dataset(
      H5Dcreate2(file, path.c_str(), type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      H5Dclose);
  require_h5(dataset.valid(), "cannot create dataset ", path);
  if (shape_numel(s.shape) > 0)
    write_shard_chunks(dataset.get(), s.shape, element_bytes, view.data, scratch);
  write_string_attribute(dataset.get(), "name", s.name);
  write_string_attribute(dataset.get(), "kind", kind_name(s.kind));
  write_string_attribute(dataset.get(), "dtype", stored_dtype_name(s.dtype));
  write_ints_attribute(dataset.get(), "global_shape", s.global_shape);
  write_ints_attribute(dataset.get(), "offset", s.offset);
  require_h5(dataset.close(), "cannot finish dataset ", path);
}

}  // namespace

void write_rank_file(const std::filesystem::path& path, const std::vector<ShardView>& shards,
                     const WriteHook& before_write) {
  QuietHdf5Errors quiet;
  auto file = create_file(path);
  nlohmann::json table = nlohmann::json::array();
  std::vector<std::byte> scratch;
  for (const auto& view : shards) {
    try {
      if (before_write) before_write(path, view.record.name);
      write_shard(file.get(), view, scratch);
    } catch (const std::exception& e) {
      throw InputError(concat("checkpoint file ", path.string(), ", tensor ", view.record.name,
                              " (", kind_name(view.record.kind), "): ", e.what()));
    }
    table.push_back(to_json(view.record));
  }
  try {
    write_json_dataset(file.get(), kShardTable, table);
  } catch (const std::exception& e) {
    throw InputError(concat("checkpoint file ", path.string(), ": ", e.what()));
  }
  require_h5(file.close(), "checkpoint file ", path.string(), ": cannot flush it to disk");
  sync_path(path);
}

std::vector<ShardRecord> read_shard_table(const std::filesystem::path& path) {
  QuietHdf5Errors quiet;
  try {
    const auto file = open_file(path);
    std::vector<ShardRecord> shards;
    for (const auto& entry : read_json_dataset(file.get(), kShardTable))
      shards.push_back(shard_from_json(entry));
    return shards;
  } catch (const InputError& e) {
    throw InputError(concat("checkpoint file ", path.string(), ": ", e.what()));
  }
}

}  // namespace metamorph::checkpoint
