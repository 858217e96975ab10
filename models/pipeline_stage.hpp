#pragma once
// Which layers a pipeline stage runs. The first stage also holds the embedding, the last the
// final norm and LM head (and, for tied embeddings, its own copy of the embedding, whose
// gradient is summed with the first stage's).
#include <cstdint>
#include <string>

namespace metamorph {

struct PipelineStage {
  int index = 0;
  int count = 1;
  std::int64_t first_layer = 0;
  std::int64_t end_layer = -1;  // exclusive; -1: every layer (single stage)

  bool first() const { return index == 0; }
  bool last() const { return index == count - 1; }
  // Whether this stage holds the parameter `name` of a model with `layers` layers.
  bool holds(const std::string& name, std::int64_t layers, bool tied) const;
};

// Stage `index` of `count` over `layers` layers: contiguous ranges; the layers % count longer
// stages are 1, 2, ... (stage 0, which embeds, gets an extra layer last), as the planner splits.
// InputError when there are more stages than layers.
PipelineStage pipeline_stage(int index, int count, std::int64_t layers);

}  // namespace metamorph
