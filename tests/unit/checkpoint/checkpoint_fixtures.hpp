#pragma once
// Shared pieces of the checkpoint tests: a tiny model, parameters whose every element is a known
// function of (tensor, kind, global index) so any shard can be checked, and in-process "ranks".
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "models/model_config.hpp"
#include "models/parameter.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/core/arena.hpp"

namespace metamorph::test {

ModelConfig tiny_config(bool tied = false);
nlohmann::json tiny_config_json(bool tied = false);

enum class Fill { model, master, m, v };
// The value element `index` (row-major, global) of `name` holds for that fill.
float expected_value(const std::string& name, Fill fill, std::int64_t index);

struct ShardLayout {
  int world = 1;
  int rank = 0;
  int split_dim = 0;         // dims beyond a tensor's rank use its last dim
  bool optimizer = true;     // allocate and fill adam_m/adam_v
  int optim_split_dim = -1;  // ZeRO-1 style: optimizer blocks split differently (-1: as weights)
  bool model_replicated = false;  // weights whole on every rank (with optim_split_dim: ZeRO-1)
  bool bf16_weights = false;      // value bf16 plus an fp32 master (the GPU case)
};

// Every parameter of `config`, this rank's shard, filled with expected_value (zeros if !fill).
ParameterSet make_parameters(const ModelConfig& config, Arena& arena, const ShardLayout& layout,
                             bool fill = true);
ParameterSet make_parameters(const std::vector<ParameterSpec>& specs, Arena& arena,
                             const ShardLayout& layout, bool fill = true);

// Number of elements of `params` that differ from expected_value (value and, if allocated,
// master, adam_m, adam_v). bf16 values are compared after rounding the expected value.
std::int64_t count_mismatches(const ParameterSet& params);

CheckpointState sample_state(std::int64_t step, bool tied = false);

// Runs fn(rank, context) on `world` threads whose contexts agree through a shared all_ok, the
// way MPI ranks would.
void run_ranks(int world, const std::function<void(int, const RankContext&)>& fn);

}  // namespace metamorph::test
