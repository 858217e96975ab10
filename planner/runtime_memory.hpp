#pragma once
// The memory of a metamorph run, term by term as its code allocates it, so that the arena's
// measured peak can be predicted (docs/planner.md, "Memory of metamorph's own runtime"):
// what DecoderLayer, Attention, SwiGluMlp and Transformer keep per micro-batch, the largest
// transient of the backward pass, the trainer's token buffers and ZeRO-1's gradient segments.
// MoE blocks: the routed rows follow Job::routing (uniform by default).
// Tensor parallelism without sequence parallelism: layer inputs and norm outputs are replicated
// on every TP rank, projections and the vocabulary are split.
#include "planner/cost_model.hpp"

namespace metamorph::planner {

// Bytes one layer keeps for its backward, per token of one micro-batch on one TP rank.
double metamorph_layer_bytes_per_token(const ModelShape& model, const Job& job,
                                       const Layout& layout, int64_t layer);

// The GPU attention backward's scratch per token of a micro-batch (Job::attention_scratch), 0 where
// cuDNN does not take the shape.
double attention_scratch_bytes_per_token(const ModelShape& m, const Job& job, const Layout& l);

// The routing that bounds an MoE rank's memory from above: every slot kept, and the rank's experts
// taking all the rows the EP group can send them (min(k, local experts) per token), or under a
// capacity factor their capacity, whichever is less (docs/planner.md).
RoutingLoad worst_case_routing(const ModelShape& model, const Job& job, const Layout& layout);

MemoryBreakdown metamorph_rank_memory(const ModelShape& model, const Job& job, const Layout& layout,
                                      int stage);

}  // namespace metamorph::planner
