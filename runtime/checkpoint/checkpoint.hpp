#pragma once
// Sharded HDF5 checkpoints: what the trainer and the tools call. Format and protocol are in
// docs/checkpoint-format.md.
//
//   save_checkpoint(root, params, state, rank_context, {.keep_last = 3});
//   auto state = load_checkpoint(root, params);  // params: shards allocated, offsets set
//
// Every rank calls save_checkpoint with its own shards; each writes rank_<r>.h5, rank 0 builds
// index.h5, writes COMMITTED, renames step_N.tmp to step_N and moves `latest` by rename.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/checkpoint/checkpoint_state.hpp"
#include "runtime/checkpoint/rank_file.hpp"

namespace metamorph {

// How the ranks of a save agree. all_ok(mine) must be collective (a barrier) and return true only
// when every rank passed true; under MPI an MPI_Allreduce of MPI_LAND. A single process keeps
// the defaults.
struct RankContext {
  int rank = 0;
  int world = 1;
  std::function<bool(bool)> all_ok = [](bool ok) { return ok; };
  // Replicas of a block (data parallel) are written once: a rank writes its model shards only
  // when model_replica == 0 and its optimizer shards only when optim_replica == 0 (ZeRO-1:
  // model_replica = dp rank, optim_replica = 0; plain DP: both = dp rank).
  int model_replica = 0;
  int optim_replica = 0;
  // Routed experts' replicas are the expert-data-parallel ranks (the ranks holding the same
  // experts); -1 means the same as model_replica / optim_replica.
  int expert_model_replica = -1;
  int expert_optim_replica = -1;
};

struct SaveOptions {
  int keep_last = 0;                   // keep the newest K committed steps; 0 keeps every one
  bool with_optimizer = true;          // AdamW moments (and separate fp32 masters)
  checkpoint::WriteHook before_write;  // fault injection for tests; empty in production
};

struct LoadOptions {
  bool with_optimizer = true;  // fill adam_m/adam_v (and master) where they are allocated
  bool verify = false;         // read every byte of the checkpoint and check it first
};

// Saves the step `state.step` under `root` and returns the committed step directory. Throws
// InputError naming the file and tensor on any rank's failure, on every rank, leaving the
// previous checkpoint and `latest` untouched.
std::filesystem::path save_checkpoint(const std::filesystem::path& root, const ParameterSet& params,
                                      const CheckpointState& state, const RankContext& context = {},
                                      const SaveOptions& options = {});

// Fills every parameter of `into` (value at `offset`; master/adam_m/adam_v at `optim_offset`,
// where allocated and with_optimizer) from the checkpoint, reading only the hyperslabs it needs,
// converting dtypes where they differ (f32 <-> bf16). Returns the run's state.
CheckpointState load_checkpoint(const std::filesystem::path& dir_or_root, ParameterSet& into,
                                const LoadOptions& options = {});

// A root (its `latest`, else its newest committed step), a step directory, or the root plus a
// step number -> the committed step directory. InputError when it is not a checkpoint.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& path,
                                         std::optional<std::int64_t> step = std::nullopt);

struct CheckpointFault {
  std::string file;    // the file at fault (may be the directory)
  std::string tensor;  // empty when the fault is not about one tensor
  std::string message;
  std::string to_string() const;
};

// Reads every byte (checksums), checks completeness, shapes against the checkpoint's own config
// and, when given, against `expected`. Empty when the checkpoint is sound.
std::vector<CheckpointFault> verify_checkpoint(const std::filesystem::path& dir_or_root,
                                               const ModelConfig* expected = nullptr);

// Deletes all but the newest `keep_last` committed steps under root (and stale .tmp/.trash
// directories of older steps). Never deletes the step `latest` names.
void apply_retention(const std::filesystem::path& root, int keep_last);

}  // namespace metamorph
