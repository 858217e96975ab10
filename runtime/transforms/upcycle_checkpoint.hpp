#pragma once
// `metamorph upcycle` without the command line: dense checkpoint in, MoE checkpoint out.
#include <filesystem>

#include "models/model_config.hpp"
#include "runtime/transforms/upcycle_options.hpp"

namespace metamorph {

struct UpcycleSummary {
  std::filesystem::path saved;  // the committed step directory of the MoE checkpoint
  ModelConfig from, to;
  std::int64_t from_parameters = 0, to_parameters = 0, active_parameters = 0;
  // max |logits_moe - logits_dense| / max |logits_dense| on a fixed probe batch: ~1e-7 when the
  // upcycled model is exact (docs/transforms.md lists which variants are), larger otherwise.
  double logit_deviation = 0;
};

// Loads the dense checkpoint `from` (a root or a step directory, saved under any layout) whole,
// upcycles it and saves a normal MoE checkpoint under `out` (step 0, fresh optimizer state,
// single-rank layout, the MoE config in it; loadable under any layout). `out` must not exist
// or be empty. Bad requests throw InputError before any tensor is read.
UpcycleSummary upcycle_checkpoint(const std::filesystem::path& from, const UpcycleOptions& options,
                                  const std::filesystem::path& out);

}  // namespace metamorph
