#pragma once
// Enumerates every layout of a cluster, evaluates each with the cost model, ranks the feasible
// ones by predicted throughput and keeps the refused ones with their reasons.
#include <optional>
#include <string>
#include <vector>

#include "planner/cost_model.hpp"

namespace metamorph::planner {

// What the user fixed; unset fields are searched.
struct Constraints {
  LayoutFilter fixed;
  int max_tp = 0;  // 0: no limit beyond the node size
  int max_pp = 0;
  int max_vpp = 4;
  int max_micro_batch = 16;
  bool allow_recompute = true;
  // Sequence parallelism whenever TP > 1 (Megatron-LM since 2022, Megatron-Core); false for
  // software without it, whose TP ranks hold the norms' and residuals' activations in full.
  bool sequence_parallel = true;
  double memory_headroom = 0.05;  // fraction of device memory kept free
  // Only layouts metamorph's runtime executes (what `train --plan` accepts): one virtual stage,
  // no selective recompute, no sequence parallelism, and under TP the experts split like the
  // dense part (expert-TP = TP; a separate expert-TP size needs TP 1).
  // Interleaved pairs (Layout::interleave_pairs) are searched, where the runtime runs them, only
  // under runtime_only; fixed.interleave_pairs = true searches only TP > 1, PP 1 layouts, each
  // with pairs, and refuses those with fewer than two micro-batches per replica.
  bool runtime_only = false;
};

struct SearchResult {
  std::vector<Evaluation> ranked;   // feasible, best throughput first
  std::vector<Evaluation> refused;  // invalid or out of memory, with reasons
  size_t candidates() const { return ranked.size() + refused.size(); }
};

SearchResult search_layouts(const ModelShape& model, const Job& job, const Cluster& cluster,
                            const Constraints& constraints);

// When nothing fits: one line saying by how much the leanest layout misses and what would fit
// (more GPUs, recompute, a shorter sequence).
std::string no_fit_advice(const ModelShape& model, const Job& job, const Cluster& cluster,
                          const Constraints& constraints, const SearchResult& result);

// Validates the job against the model; throws InputError.
void validate_job(const Job& job);
// Refuses fixed sizes that contradict each other before anything is searched (interleaved pairs
// with TP 1 or PP > 1); throws InputError naming the values and what would be valid.
void validate_constraints(const Constraints& constraints);

}  // namespace metamorph::planner
