#include "runtime/checkpoint/index_file.hpp"

#include <chrono>
#include <ctime>

#include "runtime/checkpoint/file_sync.hpp"
#include "runtime/checkpoint/hdf5_util.hpp"
#include "runtime/core/error.hpp"

#ifndef METAMORPH_CODE_VERSION
#define METAMORPH_CODE_VERSION "unknown"
#endif

namespace metamorph::checkpoint {

namespace fs = std::filesystem;

std::string code_version() {
  return METAMORPH_CODE_VERSION;
}

namespace {

void write_virtual_dataset(hid_t index, const TensorRecord& t) {
  const std::string path = dataset_path(t.name, t.kind);
  create_parent_groups(index, path);
  const auto dims = to_hsize(t.shape);
  const int rank = static_cast<int>(dims.size());
  H5Handle space(H5Screate_simple(rank, dims.data(), nullptr), H5Sclose);
  H5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  for (const auto& block : t.blocks) {
    H5Handle mapped(H5Screate_simple(rank, dims.data(), nullptr), H5Sclose);
    const auto start = to_hsize(block.offset);
    const auto count = to_hsize(block.shape);
    H5Sselect_hyperslab(mapped.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    H5Handle source(H5Screate_simple(rank, count.data(), nullptr), H5Sclose);
    // A relative file name: HDF5 looks for it next to index.h5, so the directory can move.
    require_h5(H5Pset_virtual(dcpl.get(), mapped.get(), rank_file_name(block.rank).c_str(),
                              path.c_str(), source.get()) >= 0,
               "cannot map block of rank ", block.rank);
  }
  const hid_t type = stored_hdf5_type(t.dtype);
  H5Handle dataset(
      H5Dcreate2(index, path.c_str(), type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      H5Dclose);
  require_h5(dataset.valid(), "cannot create virtual dataset ", path);
  write_string_attribute(dataset.get(), "name", t.name);
  write_string_attribute(dataset.get(), "kind", kind_name(t.kind));
  write_string_attribute(dataset.get(), "dtype", stored_dtype_name(t.dtype));
  write_ints_attribute(dataset.get(), "global_shape", t.shape);
}

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm parts{};
  gmtime_r(&now, &parts);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &parts);
  return buffer;
}

nlohmann::json json_attribute(hid_t object, const char* name) {
  const std::string text = read_string_attribute(object, name);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat("attribute '", name, "' is not valid JSON (", e.what(), ")"));
  }
}

}  // namespace

void write_index_file(const fs::path& step_dir, const std::vector<TensorRecord>& tensors,
                      const CheckpointState& state) {
  QuietHdf5Errors quiet;
  const fs::path path = step_dir / kIndexFile;
  auto index = create_file(path);
  const hid_t root = index.get();
  std::string current;
  try {
    for (const auto& t : tensors) {
      current = t.name;
      if (shape_numel(t.shape) > 0) write_virtual_dataset(root, t);
    }
    current.clear();
    nlohmann::json table = nlohmann::json::array();
    for (const auto& t : tensors) table.push_back(to_json(t));
    write_json_dataset(root, kTensorTable, table);
    write_int_attribute(root, "format_version", kFormatVersion);
    write_string_attribute(root, "code_version", code_version());
    write_string_attribute(root, "created_utc", utc_now());
    write_int_attribute(root, "step", state.step);
    write_int_attribute(root, "tokens", state.tokens);
    write_int_attribute(root, "world_size", state.world_size);
    write_string_attribute(root, "config", state.config.dump());
    write_string_attribute(root, "layout", state.layout.dump());
    write_string_attribute(root, "data_position", state.data_position.dump());
    write_string_attribute(root, "rng", state.rng.dump());
    write_string_attribute(root, "extra", state.extra.dump());
  } catch (const InputError& e) {
    throw InputError(concat("checkpoint file ", path.string(),
                            current.empty() ? "" : ", tensor " + current, ": ", e.what()));
  }
  require_h5(index.close(), "checkpoint file ", path.string(), ": cannot flush it to disk");
  sync_path(path);
}

const TensorRecord* IndexContents::find(const std::string& name, TensorKind kind) const {
  for (const auto& t : tensors)
    if (t.name == name && t.kind == kind) return &t;
  return nullptr;
}

IndexContents read_index_file(const fs::path& step_dir) {
  QuietHdf5Errors quiet;
  const fs::path path = step_dir / kIndexFile;
  try {
    const auto index = open_file(path);
    const hid_t root = index.get();
    IndexContents contents;
    CheckpointState& s = contents.state;
    s.format_version = read_int_attribute(root, "format_version");
    require(s.format_version <= kFormatVersion, "checkpoint format version ", s.format_version,
            " is newer than this metamorph reads (up to ", kFormatVersion,
            "); load it with a newer metamorph");
    require(s.format_version >= 1, "invalid checkpoint format version ", s.format_version);
    s.code_version = read_string_attribute(root, "code_version");
    s.step = read_int_attribute(root, "step");
    s.tokens = read_int_attribute(root, "tokens");
    s.world_size = static_cast<int>(read_int_attribute(root, "world_size"));
    s.config = json_attribute(root, "config");
    s.layout = json_attribute(root, "layout");
    s.data_position = json_attribute(root, "data_position");
    s.rng = json_attribute(root, "rng");
    s.extra = json_attribute(root, "extra");
    const auto table = read_json_dataset(root, kTensorTable);
    require(table.is_array(), "the tensor table is not a list");
    for (const auto& entry : table) contents.tensors.push_back(tensor_from_json(entry));
    for (const auto& t : contents.tensors)
      for (const auto& b : t.blocks)
        require(b.rank < s.world_size, "tensor ", t.name, " names rank ", b.rank, " of a world of ",
                s.world_size);
    return contents;
  } catch (const InputError& e) {
    throw InputError(concat("checkpoint index ", path.string(), ": ", e.what()));
  }
}

}  // namespace metamorph::checkpoint
