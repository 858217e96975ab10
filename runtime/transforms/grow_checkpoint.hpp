#pragma once
// `metamorph grow` without the command line: checkpoint in, grown checkpoint out.
#include <filesystem>
#include <string>

#include "models/model_config.hpp"
#include "runtime/transforms/grow_options.hpp"

namespace metamorph {

struct GrowSummary {
  std::filesystem::path saved;  // the committed step directory of the grown checkpoint
  ModelConfig from, to;
  std::int64_t from_parameters = 0, to_parameters = 0;
  // max |logits_grown - logits_source| / max |logits_source| on a fixed probe batch: ~1e-7 for
  // function-preserving growth, larger for AKI, copied layers or noise.
  double logit_deviation = 0;
};

// Loads the checkpoint `from` (a root or a step directory, saved under any layout) whole, grows
// it to `to` and saves a normal checkpoint under `out` (step 0, fresh optimizer state,
// single-rank layout; loadable under any layout). `out` must not exist or be empty.
GrowSummary grow_checkpoint(const std::filesystem::path& from, const ModelConfig& to,
                            const GrowOptions& options, const std::filesystem::path& out);

}  // namespace metamorph
