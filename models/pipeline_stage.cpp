#include "models/pipeline_stage.hpp"

#include "models/model_config.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

PipelineStage pipeline_stage(int index, int count, std::int64_t layers) {
  require(count >= 1 && count <= layers, "pipeline-parallel size ", count,
          " must be between 1 and the number of layers (", layers, ")");
  PipelineStage s;
  s.index = index;
  s.count = count;
  // The planner's split (planner/cost_model.cpp stage_shape): the remainder layers go to stages
  // 1, 2, ... and to stage 0, which also carries the embedding, last.
  const std::int64_t base = layers / count, extra = layers % count;
  auto length = [&](int i) { return base + ((i == 0 ? count - 1 : i - 1) < extra ? 1 : 0); };
  s.first_layer = 0;
  for (int i = 0; i < index; ++i) s.first_layer += length(i);
  s.end_layer = s.first_layer + length(index);
  return s;
}

bool PipelineStage::holds(const std::string& name, std::int64_t layers, bool tied) const {
  if (const auto layer = decoder_layer_of(name)) {
    const std::int64_t end = end_layer < 0 ? layers : end_layer;
    return *layer >= first_layer && *layer < end;
  }
  if (name == "model.embed_tokens.weight") return first() || (last() && tied);
  return last();  // model.norm.weight, lm_head.weight
}

}  // namespace metamorph
