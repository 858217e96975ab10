#pragma once
// The commit protocol shared by save_checkpoint and the safetensors import: every rank writes
// its file into step_N.tmp/, rank 0 builds index.h5 and COMMITTED, renames the directory and
// moves `latest`, each step agreed through RankContext::all_ok.
#include <filesystem>
#include <functional>
#include <vector>

#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/rank_file.hpp"

namespace metamorph::checkpoint {

// `shards` runs on every rank inside the protocol, so its failure aborts all ranks cleanly.
std::filesystem::path save_shards(const std::filesystem::path& root,
                                  const std::function<std::vector<ShardView>()>& shards,
                                  const CheckpointState& state, const RankContext& context,
                                  const SaveOptions& options);

// The views save_checkpoint writes for this rank's parameters.
std::vector<ShardView> parameter_shard_views(const ParameterSet& params, const RankContext& context,
                                             bool with_optimizer);

}  // namespace metamorph::checkpoint
