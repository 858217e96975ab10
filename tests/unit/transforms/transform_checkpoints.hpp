#pragma once
// Checkpoints for the transform tests: a model saved as tp x pp shards by in-process ranks (to
// check that a transform reads any layout), whole-model loads, and HF safetensors files for the
// PyTorch references.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "models/init.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph::test {

namespace fs = std::filesystem;

inline CheckpointState state_for(const ModelConfig& config, int tp, int pp) {
  CheckpointState state;
  state.step = 7;
  state.tokens = 700;
  state.config = model_config_to_json(config);
  state.layout = {{"tp", tp}, {"pp", pp}, {"dp", 1}, {"ep", 1}, {"zero1", false}};
  return state;
}

// Which dim tensor parallelism splits (Megatron: column-parallel QKV, gate/up and the
// vocab-parallel embedding/head along dim 0, row-parallel o/down along dim 1); -1: replicated.
inline int tp_split_dim(const std::string& name) {
  for (const char* column :
       {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head"})
    if (name.find(column) != std::string::npos) return 0;
  if (name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos)
    return 1;
  return -1;
}

// Pipeline stage of a parameter with the layers split in halves; embedding first, head last.
inline int pp_stage(const std::string& name, std::int64_t layers) {
  if (name.rfind("model.layers.", 0) == 0) return std::stoll(name.substr(13)) < layers / 2 ? 0 : 1;
  return name.find("embed_tokens") != std::string::npos ? 0 : 1;
}

// Rank (tp, pp)'s shards of `whole`; replicated tensors are held by tp rank 0 only.
inline ParameterSet shards_of(Backend& backend, const ParameterSet& whole, std::int64_t layers,
                              int tp, int pp) {
  ParameterSet mine;
  for (const auto& p : whole.all()) {
    if (pp_stage(p.name, layers) != pp) continue;
    const int dim = tp_split_dim(p.name);
    if (dim < 0 && tp != 0) continue;
    Parameter s;
    s.name = p.name;
    s.global_shape = p.global_shape;
    s.offset = Shape(p.global_shape.size(), 0);
    Shape local = p.global_shape;
    if (dim >= 0) {
      const auto d = static_cast<std::size_t>(dim);
      local[d] = p.global_shape[d] / 2;
      s.offset[d] = tp * local[d];
    }
    s.value = backend.empty(local);
    const std::int64_t cols = p.global_shape.size() == 2 ? p.global_shape[1] : 1;
    const std::int64_t local_cols = local.size() == 2 ? local[1] : 1;
    const std::int64_t row0 = s.offset[0], col0 = s.offset.size() == 2 ? s.offset[1] : 0;
    for (std::int64_t r = 0; r < local[0]; ++r)
      std::memcpy(s.value.data<float>() + r * local_cols,
                  p.value.data<float>() + (row0 + r) * cols + col0,
                  static_cast<std::size_t>(local_cols) * sizeof(float));
    mine.add(std::move(s));
  }
  return mine;
}

inline ParameterSet load_whole(Backend& backend, const ModelConfig& config, const fs::path& dir) {
  ParameterSet params = make_parameters(backend, config);
  LoadOptions load;
  load.with_optimizer = false;
  load_checkpoint(dir, params, load);
  return params;
}

// The safetensors layout Hugging Face reads: u64 header length, JSON header, raw f32 data.
inline void write_safetensors(const fs::path& path, const ParameterSet& params) {
  nlohmann::json header = nlohmann::json::object();
  std::size_t offset = 0;
  for (const auto& p : params.all()) {
    header[p.name] = {{"dtype", "F32"},
                      {"shape", p.global_shape},
                      {"data_offsets", {offset, offset + p.value.bytes()}}};
    offset += p.value.bytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t length = text.size();
  out.write(reinterpret_cast<const char*>(&length), sizeof(length));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& p : params.all())
    out.write(static_cast<const char*>(p.value.raw()),
              static_cast<std::streamsize>(p.value.bytes()));
}

}  // namespace metamorph::test
