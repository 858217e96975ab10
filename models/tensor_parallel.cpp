#include "models/tensor_parallel.hpp"

#include <algorithm>

#include "runtime/core/error.hpp"

namespace metamorph {

int tp_split_dim(const std::string& name) {
  for (const char* rows : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias",
                           "k_proj.bias", "v_proj.bias", "gate_proj.weight", "up_proj.weight",
                           "embed_tokens.weight", "lm_head.weight"})
    if (name.ends_with(rows)) return 0;
  for (const char* cols : {"o_proj.weight", "down_proj.weight"})
    if (name.ends_with(cols)) return 1;
  return -1;
}

bool is_vocab_parallel(const std::string& name) {
  return name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight");
}

VocabShard vocab_shard(std::int64_t vocab, int size, int rank) {
  const std::int64_t per_rank = (vocab + size - 1) / size;
  require(per_rank * (size - 1) < vocab, "vocab_size ", vocab, " leaves tensor-parallel rank ",
          size - 1, " of ", size, " without vocabulary rows (", per_rank,
          " rows per rank); use a --tp of at most ", vocab / std::max<std::int64_t>(1, per_rank));
  VocabShard shard;
  shard.offset = per_rank * rank;
  shard.rows = std::min(per_rank, vocab - shard.offset);
  return shard;
}

bool tp_partial_gradient(const std::string& name) {
  // Router and shared-expert gate weights: replicated, but their gradients come from the
  // experts' TP-partial outputs (docs/parallelism.md, tokens under tensor parallelism).
  return name.ends_with("q_norm.weight") || name.ends_with("k_norm.weight") ||
         name.ends_with("mlp.gate.weight") || name.ends_with("mlp.shared_expert_gate.weight");
}

}  // namespace metamorph
