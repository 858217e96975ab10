#pragma once
// A parallel layout and the job it runs: what the search enumerates and a plan file records.
#include <cstdint>
#include <optional>
#include <string>

namespace metamorph::planner {

enum class Recompute { none, selective, full };
// Whose activation accounting the memory model uses: Korthikanti et al.'s (the published
// Megatron-LM runs it is checked against) or the tensors metamorph's own layers keep
// (planner/runtime_memory.hpp; what a metamorph run's arena measures).
enum class ActivationAccounting { megatron, metamorph };
enum class Objective { ar, diffusion };

const char* recompute_name(Recompute recompute);
Recompute parse_recompute(const std::string& text);  // none|selective|full (sel ok)
const char* objective_name(Objective objective);
Objective parse_objective(const std::string& text);  // ar|diffusion

// World = tp x pp x dp; EP lives inside DP (Megatron-Core), expert layers may use their own TP
// size etp (a divisor of tp); the expert data-parallel group is then tp*dp/(ep*etp) ranks.
struct Layout {
  int tp = 1;
  int pp = 1;
  int vpp = 1;  // virtual stages per pipeline rank (interleaved 1F1B)
  int ep = 1;
  int etp = 1;
  int dp = 1;
  int micro_batch = 1;
  int64_t num_micro_batches = 1;
  Recompute recompute = Recompute::none;
  bool zero1 = false;
  bool sequence_parallel = false;  // on whenever tp > 1 in searched layouts
  // Micro-batches two at a time, interleaved layer by layer (`train --interleave-pairs`): each
  // one's TP all-reduces run while the other computes; both keep their activations at once.
  bool interleave_pairs = false;

  int world() const { return tp * pp * dp; }
  int expert_dp() const { return tp * dp / (ep * etp); }
  // Whole experts spread over a TP group that holds the same tokens (metamorph's runtime,
  // `train --tp T --etp 1 --ep T`): no all-to-all, the experts' partial outputs are summed by
  // the layer's TP all-reduce as under etp == tp. With sequence parallelism (Megatron-Core) the
  // ranks hold different tokens and etp 1 ep T is an ordinary EP group with its all-to-all.
  bool experts_over_tp() const { return tp > 1 && etp == 1 && ep == tp && !sequence_parallel; }
};

// Empty when the runtime can interleave this layout's micro-batches in pairs (TP > 1, one
// pipeline stage, at least two micro-batches per replica), else why not.
std::string interleave_pairs_problem(const Layout& layout);

// "tp8.pp4.vpp2.ep8.etp1.dp2.mb1.sel.z1": the name tables print and --explain accepts; interleaved
// pairs add ".pairs" ("tp2.pp1.vpp1.ep1.etp1.dp1.mb2.none.z0.pairs").
std::string layout_label(const Layout& layout);

// A partial layout: the fields a user fixed (--explain, --tp ...). Tokens tpN ppN vppN epN etpN
// dpN mbN mN, none|sel|selective|full, z0|z1|zero1, pairs|nopairs, separated by . , - or spaces.
struct LayoutFilter {
  std::optional<int> tp, pp, vpp, ep, etp, dp, micro_batch;
  std::optional<int64_t> num_micro_batches;
  std::optional<Recompute> recompute;
  std::optional<bool> zero1;
  std::optional<bool> interleave_pairs;
  bool matches(const Layout& layout) const;
};
LayoutFilter parse_layout_filter(const std::string& text);

// How a step's routed (token, expert) rows fall on one rank, relative to uniform routing of a
// micro-batch's tokens x k slots (the metamorph accounting's MoE terms; 1, 1 is uniform and
// dropless). `sent`: the share of the rank's slots that survive the capacity limit (they are
// gathered, sent and combined); `received`: the rows the rank's experts run, over the same count.
// Dropless routing sends every slot, but one rank's experts may receive up to EP x its uniform
// share: worst_case_routing (runtime_memory.hpp) gives the bound.
struct RoutingLoad {
  double sent = 1.0;
  double received = 1.0;
};

// The scratch memory of the GPU attention backward (metamorph accounting): none (the CPU backend,
// or metamorph's own kernels: METAMORPH_CUDNN=0, or no cuDNN on the machine), cuDNN's
// deterministic backward graph (train's default on GPUs), or its graph with an f32 dQ
// accumulator (train --nondeterministic).
enum class AttentionScratch { none, cudnn_deterministic, cudnn_atomic };
AttentionScratch parse_attention_scratch(const std::string& text);

// What the training job asks for.
struct Job {
  int64_t seq = 0;           // tokens per sample
  int64_t global_batch = 0;  // sequences per optimizer step
  Objective objective = Objective::ar;
  // Bytes per element, mixed precision AdamW by default: bf16 weights and activations, fp32
  // gradients, fp32 master weights, two fp32 Adam moments.
  int weight_bytes = 2;
  int grad_bytes = 4;
  int master_bytes = 4;
  int optimizer_state_bytes = 8;
  int activation_bytes = 2;
  ActivationAccounting accounting = ActivationAccounting::megatron;
  RoutingLoad routing;  // metamorph accounting only
  // Size each layout's MoE rows for worst_case_routing instead of `routing` (metamorph accounting).
  bool worst_case_routing = false;
  // Under expert parallelism the busiest rank's routed rows over its uniform share (>= 1; 1:
  // balanced). The other EP ranks wait for it at the combine, so it scales the routed experts'
  // compute time of layouts with ep > 1; one rank holding every expert runs all rows however they
  // are routed. Train's metrics (`tokens_per_expert`) give it for a run's router.
  double expert_load = 1.0;
  AttentionScratch attention_scratch = AttentionScratch::none;

  // Block diffusion trains on [x_t ; x_0]: the network sees twice the sample length.
  int64_t network_seq() const { return objective == Objective::diffusion ? 2 * seq : seq; }
  int64_t tokens_per_step() const { return seq * global_batch; }
};

// Sets the byte sizes: "bf16" (mixed precision) or "fp32"; optimizer "adamw" or "sgd" (momentum).
void set_precision(Job& job, const std::string& precision);
void set_optimizer(Job& job, const std::string& optimizer);

}  // namespace metamorph::planner
