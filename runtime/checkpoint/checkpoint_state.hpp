#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace metamorph {

// The run's state besides the tensors, stored as attributes of index.h5.
struct CheckpointState {
  std::int64_t step = 0;
  std::int64_t tokens = 0;                           // consumed so far
  nlohmann::json config = nlohmann::json::object();  // HF config.json of the model
  nlohmann::json layout = nlohmann::json::object();  // the plan: tp, pp, ep, dp, zero1, ...
  nlohmann::json data_position = nlohmann::json::object();
  nlohmann::json rng = nlohmann::json::object();
  nlohmann::json extra = nlohmann::json::object();
  // Filled in by save (and read back by load): the metamorph version that wrote it.
  std::string code_version;
  std::int64_t format_version = 0;
  int world_size = 1;
};

}  // namespace metamorph
