#pragma once
// What the multi-rank training tests share: the rank of this process, one directory for all
// ranks holding a small byte-level corpus prepared as an indexed dataset, a quiet training run
// over every rank, and the comparison of gathered weights.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "models/model_config.hpp"
#include "runtime/train/training_run.hpp"

namespace metamorph::test {

int world_rank();
int world_size();

// A fresh directory under the temp dir (named `prefix` + rank 0's pid) with `corpus.txt` prepared
// as `data` (byte tokenizer, `vocab_size`, 5% held out for validation). `populate` runs on rank 0
// after that (to write model configs); every rank returns once it is done.
std::filesystem::path shared_corpus_dir(
    const std::string& prefix, int vocab_size,
    const std::function<void(const std::filesystem::path&)>& populate = {});

// Configs of the small models the multi-rank tests train over a vocabulary of 260 bytes: a
// four-layer Llama and a two-layer MoE with a shared expert and both router losses.
inline constexpr const char* kTinyDenseJson = R"({"vocab_size": 260, "hidden_size": 32,
  "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
  "num_key_value_heads": 2, "max_position_embeddings": 64, "model_type": "llama"})";
inline constexpr const char* kTinyMoeJson = R"({"vocab_size": 260, "hidden_size": 16,
  "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
  "num_key_value_heads": 2, "max_position_embeddings": 64, "model_type": "qwen2_moe",
  "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
  "shared_expert_intermediate_size": 8, "norm_topk_prob": true,
  "router_aux_loss_coef": 0.01, "router_z_loss_coef": 0.001})";

// Per-step losses of `options` trained over every rank of MPI_COMM_WORLD, logging nothing.
std::vector<double> losses_over_world(const RunOptions& options);

// A few steps over the corpus of shared_corpus_dir(`dir`) with its model.json: sequences of 16,
// micro-batches of 2 in a global batch of 8, a short warm-up, gradient buckets of 1000 elements
// (several, so they are reduced while the backward still runs), checkpoints to `dir`/`save`.
RunOptions small_run_options(const std::filesystem::path& dir, const std::string& save,
                             std::int64_t steps);

// Every weight of `checkpoint` loaded (without optimizer state) into the single-rank CPU model of
// `config`, in parameter order: what a run under any layout saved, resharded to one rank.
std::vector<float> single_rank_weights(const ModelConfig& config,
                                       const std::filesystem::path& checkpoint);

// max |got - reference| / max |reference| over two weight vectors of the same length.
double relative_max_difference(const std::vector<float>& got, const std::vector<float>& reference);

}  // namespace metamorph::test
