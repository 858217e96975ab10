#pragma once
// The planner's cost model: per-rank memory, per-rank communication volume per collective, and
// step time of one layout. Plain structs so measured runs can be compared term by term
// (arena peak against MemoryBreakdown, communicator byte counters against CommVolume).
#include <algorithm>
#include <string>
#include <vector>

#include "planner/cluster.hpp"
#include "planner/layout.hpp"
#include "planner/model_shape.hpp"

namespace metamorph::planner {

// Which layers, and which extras, a pipeline stage holds.
struct StageShape {
  int64_t first_layer = 0;
  int64_t num_layers = 0;
  bool has_embedding = false;
  bool has_lm_head = false;
};
// Layers split as evenly as possible; remainder layers go to the middle stages first.
StageShape stage_shape(const ModelShape& model, const Layout& layout, int stage);

// Bytes per rank. Activations are the peak held under the schedule (1F1B in-flight
// micro-batches), comm_buffers the transient send/receive buffers of TP, EP and PP.
// optimizer_phase holds buffers that live only between the backward pass and the update (ZeRO-1's
// gradient segments), when no activation is alive: the peak takes the larger of the two phases.
struct MemoryBreakdown {
  double weights = 0;
  double grads = 0;
  double optimizer = 0;
  double activations = 0;
  double comm_buffers = 0;
  double workspace = 0;
  double optimizer_phase = 0;
  double total() const {
    return weights + grads + optimizer +
           std::max(activations + comm_buffers + workspace, optimizer_phase);
  }
};

// Parameters one rank of `stage` holds: dense (sharded by TP) and expert (by EP x ETP).
struct RankParameters {
  double dense = 0;
  double expert = 0;
};
RankParameters rank_parameters(const ModelShape& model, const Layout& layout, int stage);

// Activation bytes of one layer for one micro-batch on one rank (before recompute), the
// Korthikanti et al. 2022 accounting generalised to GQA, gated MLPs, MoE and flash attention.
double layer_activation_bytes(const ModelShape& model, const Job& job, const Layout& layout,
                              int64_t layer);
// Bytes kept per layer per in-flight micro-batch under the layout's recompute mode.
double stored_activation_bytes(const ModelShape& model, const Job& job, const Layout& layout,
                               int64_t layer);

// The weights, gradients and optimizer state one rank of `stage` holds (ZeRO-1 shards the state
// over DP, and expert state over expert-DP); the other fields stay 0. Both accountings use it.
MemoryBreakdown model_state_memory(const ModelShape& model, const Job& job, const Layout& layout,
                                   int stage);

MemoryBreakdown rank_memory(const ModelShape& model, const Job& job, const Cluster& cluster,
                            const Layout& layout, int stage);

// One collective kind a rank takes part in during one optimizer step.
struct CommEntry {
  std::string group;  // tp, etp, pp, ep, dp, edp, embedding, model_parallel, world
  std::string op;     // all_reduce (or reduce_scatter + all_gather), all_to_all, p2p, ...
  int group_size = 1;
  int64_t count = 0;          // collectives per step
  double message_bytes = 0;   // size of one collective's buffer
  double bytes_per_rank = 0;  // total per step under the conventions in docs/planner.md
};
struct CommVolume {
  std::vector<CommEntry> entries;
  double bytes(const std::string& group) const;
  double total() const;
};
CommVolume rank_communication(const ModelShape& model, const Job& job, const Layout& layout,
                              int stage);

// Seconds per optimizer step, split the way `metamorph plan` prints it.
struct StepTime {
  double compute = 0;        // GEMMs, attention and memory-bound work of all micro-batches
  double tp_comm = 0;        // exposed TP (and expert-TP) collectives
  double pp_bubble = 0;      // (p-1)/v micro-batch slots of the slowest stage
  double pp_p2p = 0;         // stage-boundary sends on the critical path
  double ep_all_to_all = 0;  // dispatch and combine, forward and backward
  double dp_exposed = 0;     // gradient reduction not hidden behind the last backward
  double optimizer = 0;      // the (sharded) AdamW update
  double total() const {
    return compute + tp_comm + pp_bubble + pp_p2p + ep_all_to_all + dp_exposed + optimizer;
  }
};
StepTime step_time(const ModelShape& model, const Job& job, const Cluster& cluster,
                   const Layout& layout);

// Empty when the layout can run this model and job on this cluster, else why not.
std::string layout_problem(const ModelShape& model, const Job& job, const Cluster& cluster,
                           const Layout& layout);

struct Evaluation {
  Layout layout;
  bool valid = false;      // structurally possible (divisibility)
  bool feasible = false;   // valid and fits in memory
  std::string reason;      // why not, when not feasible
  MemoryBreakdown memory;  // of the peak rank
  int peak_stage = 0;
  CommVolume comm;  // of the peak rank
  StepTime time;
  double model_flops_per_step = 0;
  double tokens_per_s = 0;
  double mfu = 0;
};
Evaluation evaluate(const ModelShape& model, const Job& job, const Cluster& cluster,
                    const Layout& layout, double memory_headroom_fraction);

}  // namespace metamorph::planner
