#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/file_sync.hpp"
#include "runtime/checkpoint/hdf5_util.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/checkpoint/tensor_reader.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;
using namespace checkpoint;

std::string CheckpointFault::to_string() const {
  return message;
}

namespace {

using Faults = std::vector<CheckpointFault>;

void check_commit_record(const fs::path& dir, Faults& faults) {
  const fs::path marker = dir / kCommitMarker;
  nlohmann::json record;
  try {
    record = nlohmann::json::parse(read_text_file(marker));
  } catch (const std::exception& e) {
    faults.push_back({marker.string(), "",
                      concat(marker.string(), ": unreadable commit record (", e.what(), ")")});
    return;
  }
  if (!record.contains("files") || !record["files"].is_object()) {
    faults.push_back({marker.string(), "", concat(marker.string(), ": no file list")});
    return;
  }
  for (const auto& [name, size] : record["files"].items()) {
    const fs::path file = dir / name;
    std::error_code error;
    if (!fs::exists(file, error)) {
      faults.push_back({file.string(), "", concat(file.string(), ": missing file")});
    } else if (size.is_number_unsigned() &&
               fs::file_size(file, error) != size.get<std::uintmax_t>()) {
      faults.push_back({file.string(), "",
                        concat(file.string(), ": ", fs::file_size(file, error),
                               " bytes, the commit record says ", size.get<std::uintmax_t>(),
                               " (truncated or altered)")});
    }
  }
}

// Reads every block of every tensor; HDF5 checks each chunk's Fletcher32 on the way in.
void check_data(const fs::path& dir, const IndexContents& index, Faults& faults) {
  TensorReader reader(dir);
  std::set<int> broken_ranks;
  std::vector<std::byte> buffer;
  for (const auto& t : index.tensors) {
    for (const auto& block : t.blocks) {
      if (broken_ranks.count(block.rank)) continue;
      try {
        reader.rank_file(block.rank, t.name);
      } catch (const InputError& e) {
        broken_ranks.insert(block.rank);
        faults.push_back({reader.rank_path(block.rank).string(), t.name, e.what()});
        continue;
      }
      // Slabs of about 64 MiB along the first dimension bound the memory this needs.
      const std::int64_t rows = block.shape[0];
      const std::int64_t row_elements = rows > 0 ? shape_numel(block.shape) / rows : 0;
      const auto row_bytes = static_cast<std::size_t>(std::max<std::int64_t>(row_elements, 1)) *
                             stored_dtype_size(t.dtype);
      const std::int64_t step =
          std::max<std::int64_t>(1, static_cast<std::int64_t>((std::size_t{64} << 20) / row_bytes));
      try {
        for (std::int64_t r = 0; r < rows; r += step) {
          Shape offset = block.offset, shape = block.shape;
          offset[0] += r;
          shape[0] = std::min(step, rows - r);
          buffer.resize(static_cast<std::size_t>(shape_numel(shape)) * stored_dtype_size(t.dtype));
          TensorRecord one_block = t;
          one_block.blocks = {block};
          reader.read(one_block, offset, shape, t.dtype, buffer.data());
        }
      } catch (const InputError& e) {
        faults.push_back({reader.rank_path(block.rank).string(), t.name, e.what()});
      }
    }
  }
}

void check_against_config(const fs::path& index_path, const IndexContents& index,
                          const ModelConfig& config, const std::string& whose, Faults& faults) {
  std::map<std::string, const TensorRecord*> model;
  for (const auto& t : index.tensors)
    if (t.kind == TensorKind::model) model[t.name] = &t;
  std::set<std::string> expected;
  for (const auto& spec : parameter_specs(config)) {
    expected.insert(spec.name);
    const auto it = model.find(spec.name);
    if (it == model.end())
      faults.push_back({index_path.string(), spec.name,
                        concat(index_path.string(), ", tensor ", spec.name, ": missing (", whose,
                               " has it, shape ", shape_string(spec.shape), ")")});
    else if (it->second->shape != spec.shape)
      faults.push_back({index_path.string(), spec.name,
                        concat(index_path.string(), ", tensor ", spec.name, ": shape ",
                               shape_string(it->second->shape), ", ", whose, " expects ",
                               shape_string(spec.shape))});
  }
  for (const auto& [name, record] : model)
    if (!expected.count(name))
      faults.push_back(
          {index_path.string(), name,
           concat(index_path.string(), ", tensor ", name, ": not a parameter of ", whose)});
}

}  // namespace

std::vector<CheckpointFault> verify_checkpoint(const fs::path& dir_or_root,
                                               const ModelConfig* expected) {
  checkpoint::QuietHdf5Errors quiet;
  Faults faults;
  fs::path dir;
  try {
    dir = resolve_checkpoint(dir_or_root);
  } catch (const InputError& e) {
    return {{dir_or_root.string(), "", e.what()}};
  }
  check_commit_record(dir, faults);
  IndexContents index;
  try {
    index = read_index_file(dir);
  } catch (const InputError& e) {
    faults.push_back({(dir / kIndexFile).string(), "", e.what()});
    return faults;
  }
  check_data(dir, index, faults);
  const fs::path index_path = dir / kIndexFile;
  if (index.state.config.is_object() && !index.state.config.empty()) {
    try {
      check_against_config(index_path, index, model_config_from_json(index.state.config),
                           "the checkpoint's own config", faults);
    } catch (const InputError& e) {
      faults.push_back(
          {index_path.string(), "",
           concat(index_path.string(), ": its model config is invalid (", e.what(), ")")});
    }
  }
  if (expected != nullptr)
    check_against_config(index_path, index, *expected, "the given config", faults);
  return faults;
}

}  // namespace metamorph
