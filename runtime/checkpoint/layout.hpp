#pragma once
// Names and records of the on-disk layout (docs/checkpoint-format.md):
//   ROOT/latest                       names the newest committed step directory
//   ROOT/step_00001000/rank_00003.h5  the shards rank 3 owns: /model/<name>, /optim/<name>/<kind>
//   ROOT/step_00001000/index.h5       a virtual dataset per global tensor + the run's state
//   ROOT/step_00001000/COMMITTED      written last; without it the directory is not a checkpoint
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/checkpoint/stored_dtype.hpp"
#include "runtime/core/tensor.hpp"

namespace metamorph::checkpoint {

inline constexpr std::int64_t kFormatVersion = 1;
inline constexpr const char* kLatestFile = "latest";
inline constexpr const char* kCommitMarker = "COMMITTED";
inline constexpr const char* kIndexFile = "index.h5";
inline constexpr const char* kTmpSuffix = ".tmp";
inline constexpr const char* kTrashSuffix = ".trash";
inline constexpr const char* kShardTable = "/metamorph/shards";    // in each rank file
inline constexpr const char* kTensorTable = "/metamorph/tensors";  // in index.h5

// What a stored tensor is: the model weight, or one of the optimizer's per-parameter tensors.
enum class TensorKind { model, master, adam_m, adam_v };
std::string kind_name(TensorKind kind);  // "model", "master", "m", "v"
TensorKind parse_kind(const std::string& name);

std::string step_dir_name(std::int64_t step);  // step_00001000
// The step of "step_00001000" (and only of that exact form).
std::optional<std::int64_t> parse_step_dir_name(const std::string& name);
std::string rank_file_name(int rank);  // rank_00003.h5
// /model/<name> or /optim/<name>/{master,m,v}. Throws InputError for names HDF5 cannot hold.
std::string dataset_path(const std::string& tensor, TensorKind kind);

// One rank's block of a global tensor.
struct ShardRecord {
  std::string name;
  TensorKind kind = TensorKind::model;
  StoredDType dtype = StoredDType::f32;
  Shape global_shape;
  Shape offset;
  Shape shape;
};
nlohmann::json to_json(const ShardRecord& shard);
ShardRecord shard_from_json(const nlohmann::json& json);

// A global tensor as index.h5 lists it: its blocks tile the global shape exactly.
struct TensorRecord {
  struct Block {
    int rank = 0;
    Shape offset;
    Shape shape;
  };
  std::string name;
  TensorKind kind = TensorKind::model;
  StoredDType dtype = StoredDType::f32;
  Shape shape;
  std::vector<Block> blocks;

  std::size_t bytes() const {
    return static_cast<std::size_t>(shape_numel(shape)) * stored_dtype_size(dtype);
  }
};
nlohmann::json to_json(const TensorRecord& tensor);
TensorRecord tensor_from_json(const nlohmann::json& json);

// Merges every rank's shards into global tensors (order: first appearance, rank 0 first).
// Exact duplicates (data-parallel replicas) collapse to the lowest rank; anything else that does
// not tile a tensor exactly (gaps, partial overlaps, disagreeing shapes or dtypes) is an error.
std::vector<TensorRecord> merge_shards(const std::vector<std::vector<ShardRecord>>& per_rank);

}  // namespace metamorph::checkpoint
