#pragma once
// The commit protocol shared by save_checkpoint and the safetensors import: every rank writes
// its file into step_N.tmp/, rank 0 builds index.h5 and COMMITTED, renames the directory and
// moves `latest`, each step agreed through RankContext::all_ok.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/rank_file.hpp"

namespace metamorph::checkpoint {

// A save between its phases: the step directory exists as step_N.tmp on every rank's view.
struct SaveInProgress {
  std::filesystem::path root, tmp;
  CheckpointState state;  // world_size set
  // "checkpoint save of step N in ROOT: what".
  std::string failure(const std::string& what) const;
};

// The protocol in three phases, so the middle one (the bytes) may run on another thread:
// begin_save (collective) creates step_N.tmp; write_rank_shards writes this rank's file and
// returns the error ("" when it succeeded; never throws, never communicates); end_save
// (collective) agrees that every file is written, then rank 0 commits. Each collective phase
// throws on every rank when any rank failed.
SaveInProgress begin_save(const std::filesystem::path& root, const CheckpointState& state,
                          const RankContext& context, const SaveOptions& options);
std::string write_rank_shards(const SaveInProgress& save,
                              const std::function<std::vector<ShardView>()>& shards,
                              const RankContext& context, const SaveOptions& options);
std::filesystem::path end_save(const SaveInProgress& save, const std::string& write_error,
                               const RankContext& context, const SaveOptions& options);

// All three in a row. `shards` runs on every rank inside the protocol, so its failure aborts all
// ranks cleanly.
std::filesystem::path save_shards(const std::filesystem::path& root,
                                  const std::function<std::vector<ShardView>()>& shards,
                                  const CheckpointState& state, const RankContext& context,
                                  const SaveOptions& options);

// The views save_checkpoint writes for this rank's parameters.
std::vector<ShardView> parameter_shard_views(const ParameterSet& params, const RankContext& context,
                                             bool with_optimizer);

}  // namespace metamorph::checkpoint
