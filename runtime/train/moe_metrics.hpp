#pragma once
// Per-layer MoE metrics of a pipeline-parallel run: each stage measures only its own layers, so
// the stages' entries are combined (one all-reduce over the pipeline group) before rank 0
// writes the metrics line.
#include <cstdint>

#include "parallel/communicator.hpp"
#include "runtime/train/trainer.hpp"

namespace metamorph {

// Replaces m.moe with the entries of every stage of the pipeline, in layer order. Collective
// over `pipeline`; num_layers is the model's layer count.
void gather_moe_metrics(Communicator& pipeline, StepMetrics& m, std::int64_t num_layers,
                        std::int64_t num_experts, Arena& arena);

}  // namespace metamorph
