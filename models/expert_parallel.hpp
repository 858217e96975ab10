#pragma once
// How a model's experts split over ranks. Under expert parallelism (EP) rank r of an EP group of
// p ranks holds experts [r * E/p, (r + 1) * E/p) of every MoE layer, under their global names
// and shapes (checkpoints stay layout-free). Under expert tensor parallelism (ETP) each expert's
// FFN is split like the dense MLP: rows of gate/up, columns of down over the expert-TP group.
// The router and the shared expert are dense parameters (replicated over EP, split over TP).
#include <cstdint>
#include <string>

namespace metamorph {

class ExpertExchange;

struct ExpertParallel {
  int rank = 0;  // EP rank
  int size = 1;  // EP size
  // Expert tensor parallelism; tp_size 0 means "the dense TP split" (etp == tp).
  int tp_rank = 0;
  int tp_size = 0;
  // Moves routed rows to the experts' ranks; null means every expert is local.
  ExpertExchange* exchange = nullptr;

  bool active() const { return size > 1; }
  // Experts [first(E), first(E) + count(E)) of E live on this rank.
  std::int64_t count(std::int64_t experts) const { return experts / size; }
  std::int64_t first(std::int64_t experts) const { return count(experts) * rank; }
};

// Whether `name` is a routed expert's weight ("model.layers.L.mlp.experts.E.<proj>.weight").
bool is_expert_parameter(const std::string& name);
// The expert index E of an expert parameter's name.
std::int64_t expert_index(const std::string& name);

}  // namespace metamorph
