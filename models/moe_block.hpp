#pragma once
// The Mixture-of-Experts feed-forward block (docs/moe.md): a router picks k experts per token,
// the (token, slot) rows are sorted by expert, moved to the experts' ranks through an
// ExpertExchange, run through each local expert's SwiGLU, brought back and summed with their
// gates; an optional shared expert (with an optional sigmoid gate) is added for every token.
// Everything runs as Backend ops on the backend's device; the host sees only the per-expert
// counts (router_forward's summary), which size the permutation and the exchange.
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "models/deferred_weight_grads.hpp"
#include "models/expert_exchange.hpp"
#include "models/mlp.hpp"
#include "models/model_config.hpp"
#include "models/router.hpp"

namespace metamorph {

struct MoeWeights {
  Parameter* router = nullptr;      // [E, h]
  Parameter* score_bias = nullptr;  // [E], sigmoid_bias only; updated by a rule, no gradient
  // The experts this rank holds, global ids first_local_expert + i.
  std::vector<MlpWeights> experts;
  MlpWeights shared;                 // gate_proj == nullptr: no shared expert
  Parameter* shared_gate = nullptr;  // [1, h], optional
};

// Looks up layer `layer`'s MoE parameters, touching only the experts `exchange` holds locally.
MoeWeights moe_weights(ParameterSet& params, const ModelConfig& config, std::int64_t layer,
                       const ExpertExchange& exchange);

// What the block saw over the forwards it recorded (training forwards of one optimizer step).
struct MoeStats {
  std::vector<double> expert_tokens;  // [E] slots routed to each expert (before capacity drops)
  double aux_loss = 0.0;              // summed over the recorded forwards
  double z_loss = 0.0;
  double entropy = 0.0;  // mean router entropy per token, summed over forwards
  std::int64_t forwards = 0;
  std::int64_t slots = 0;    // routed (token, slot) pairs
  std::int64_t dropped = 0;  // of them, over an expert's capacity
};

class MoeBlock {
 public:
  MoeBlock(Backend& backend, const MoeConfig& config, MoeWeights weights, ExpertExchange& exchange);

  // x [tokens, hidden] -> [tokens, hidden]; record_stats: count this forward in stats()
  // (off when a recomputing layer re-runs a forward it already counted).
  Tensor forward(const Tensor& x, bool record_stats = true);
  // dx of the oldest pending forward (FIFO). Accumulates weight gradients, including those of
  // loss_scale * (aux_loss + z_loss) of that forward into the router. With `later`, the routed
  // experts' gate/up, the router's, the shared-expert gate's and (when it runs after the routed
  // rows' combine) the shared expert's gate/up weight gradients are left there for the caller to
  // run behind the start of dx's TP all-reduce; the down projections' run here, before their
  // input (the activation) is overwritten by its gradient.
  Tensor backward(const Tensor& dy, float loss_scale = 1.0f, DeferredWeightGrads* later = nullptr);
  void release();

  const MoeStats& stats() const { return stats_; }
  void reset_stats();
  // sigmoid_bias: bias_e += rate * sign(mean load - load_e) for the given per-expert loads
  // (stats().expert_tokens, summed over data-parallel replicas by the caller). No-op otherwise.
  void update_balancing_bias(const std::vector<double>& load);
  // The aux and z losses of the most recent forward (unscaled by loss_scale).
  double last_aux_loss() const { return last_aux_; }
  double last_z_loss() const { return last_z_; }
  // Rows each expert may take in a forward of `tokens` tokens (over the expert-parallel group;
  // capacity_factor > 0), else -1.
  std::int64_t capacity(std::int64_t tokens) const;

 private:
  struct Pending {
    Tensor x;
    Tensor logits;  // f32 [tokens, E]
    RouterOutput routing;
    Tensor token_index;  // i32 [rows]: the token of each kept row, rows sorted by expert
    Tensor row_gate;     // f32 [rows]
    Tensor slot_row;     // i32 [tokens * k]: the row of each (token, slot), -1 when dropped
    ExchangePlan plan;
    Tensor local_in, gate, up, act;  // this rank's expert rows and their SwiGLU intermediates
    Tensor expert_out;  // [rows, h] combined expert outputs (for the gate gradient): this rank's
                        // segment alone, from row first_row, where no rows move
    std::int64_t first_row = 0;
    Tensor shared_out;    // [tokens, h] shared expert output when gated
    Tensor shared_gate;   // f32 [tokens] sigmoid(x . w) when gated
    Tensor shared_index;  // i32 [tokens] 0..tokens-1 when gated
  };

  // One projection's weights (values or gradients) of the local experts, for the grouped GEMMs.
  std::vector<const Tensor*> expert_values(Parameter* MlpWeights::*projection) const;
  std::vector<Tensor*> expert_grads(Parameter* MlpWeights::*projection) const;
  // The balancing bias in f32 (its master on the GPU), undefined without one.
  Tensor score_bias() const;
  // t itself when it has the activation dtype, else a converted copy (f32 router gradients
  // meet bf16 activations in the GPU's GEMMs).
  Tensor as_activation(const Tensor& t);

  // This rank's slice of the expert FFN width (all of it unless expert-TP splits the experts).
  std::int64_t local_ffn() const { return w_.experts.front().gate_proj->value.dim(0); }

  Backend& backend_;
  MoeConfig config_;
  RouterSpec spec_;
  MoeWeights w_;
  ExpertExchange& exchange_;
  std::optional<SwiGluMlp> shared_;
  std::deque<Pending> pending_;
  MoeStats stats_;
  double last_aux_ = 0.0, last_z_ = 0.0;
};

}  // namespace metamorph
