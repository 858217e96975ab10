#include "runtime/train/moe_metrics.hpp"

namespace metamorph {

namespace {
constexpr std::int64_t kFields = 8;  // present flag + the seven scalars of MoeLayerMetrics
}

void gather_moe_metrics(Communicator& pipeline, StepMetrics& m, std::int64_t num_layers,
                        std::int64_t num_experts, Arena& arena) {
  const std::int64_t width = kFields + num_experts;  // then the tokens of every expert
  // Every layer lives on exactly one stage, so a sum over the stages of zero-filled slots
  // assembles them (metrics precision: fp32 is enough).
  Tensor slots = Tensor::zeros({num_layers * width}, DType::f32, arena);
  float* s = slots.data<float>();
  for (const MoeLayerMetrics& l : m.moe) {
    float* at = s + l.layer * width;
    const double values[kFields] = {1.0,        l.tokens_min, l.tokens_max,     l.tokens_cv,
                                    l.aux_loss, l.z_loss,     l.router_entropy, l.drop_rate};
    for (std::int64_t i = 0; i < kFields; ++i) at[i] = static_cast<float>(values[i]);
    for (std::size_t e = 0; e < l.tokens_per_expert.size(); ++e)
      at[kFields + static_cast<std::int64_t>(e)] = static_cast<float>(l.tokens_per_expert[e]);
  }
  pipeline.all_reduce(slots, ReduceOp::sum);
  m.moe.clear();
  for (std::int64_t layer = 0; layer < num_layers; ++layer) {
    const float* at = s + layer * width;
    if (at[0] == 0.0f) continue;
    MoeLayerMetrics l;
    l.layer = layer;
    l.tokens_min = at[1];
    l.tokens_max = at[2];
    l.tokens_cv = at[3];
    l.aux_loss = at[4];
    l.z_loss = at[5];
    l.router_entropy = at[6];
    l.drop_rate = at[7];
    l.tokens_per_expert.assign(at + kFields, at + width);
    m.moe.push_back(l);
  }
}

}  // namespace metamorph
