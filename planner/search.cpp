#include "planner/search.hpp"

#include <algorithm>
#include <cmath>

#include "runtime/core/error.hpp"

namespace metamorph::planner {

namespace {

std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int i = 1; i <= n; ++i)
    if (n % i == 0) out.push_back(i);
  return out;
}

template <class T>
bool allowed(const std::optional<T>& fixed, T value) {
  return !fixed || *fixed == value;
}

}  // namespace

void validate_job(const Job& job) {
  require(job.seq > 0, "--seq must be a positive number of tokens, got ", job.seq);
  require(job.global_batch > 0, "--global-batch must be a positive number of sequences, got ",
          job.global_batch);
}

void validate_constraints(const Constraints& c) {
  const LayoutFilter& f = c.fixed;
  if (!f.interleave_pairs || !*f.interleave_pairs) return;
  require(!f.tp || *f.tp > 1, "--interleave-pairs hides tensor-parallel all-reduces behind a ",
          "second micro-batch and needs --tp > 1 (or --tp left to the search), got --tp ",
          f.tp.value_or(0));
  require(!f.pp || *f.pp == 1, "--interleave-pairs runs on one pipeline stage and needs --pp 1 ",
          "(or --pp left to the search), got --pp ", f.pp.value_or(0));
  require(!f.vpp || *f.vpp == 1,
          "--interleave-pairs runs on one pipeline stage and needs --vpp 1, ", "got --vpp ",
          f.vpp.value_or(0));
}

SearchResult search_layouts(const ModelShape& model, const Job& job, const Cluster& cluster,
                            const Constraints& c) {
  validate_job(job);
  validate_constraints(c);
  SearchResult result;
  const LayoutFilter& f = c.fixed;
  const int n = cluster.gpus;
  for (int tp : divisors(n)) {
    if (!allowed(f.tp, tp) || (c.max_tp > 0 && tp > c.max_tp)) continue;
    for (int pp : divisors(n / tp)) {
      if (!allowed(f.pp, pp) || (c.max_pp > 0 && pp > c.max_pp)) continue;
      const int dp = n / (tp * pp);
      if (!allowed(f.dp, dp)) continue;
      for (int vpp = 1; vpp <= (pp > 1 ? c.max_vpp : 1); ++vpp) {
        if (!allowed(f.vpp, vpp) || (c.runtime_only && vpp > 1)) continue;
        // EP inside DP; for this runtime also whole experts over the TP group (ep = tp, etp 1),
        // where tp does not divide dp already.
        std::vector<int> eps = model.is_moe() ? divisors(dp) : std::vector<int>{1};
        if (c.runtime_only && model.is_moe() && tp > 1 && dp % tp != 0) eps.push_back(tp);
        for (int ep : eps) {
          if (!allowed(f.ep, ep)) continue;
          for (int etp : model.is_moe() ? divisors(tp) : std::vector<int>{1}) {
            // Expert-TP means nothing to a dense model (etp stays 1 there). This runtime splits
            // experts like the dense MLP (etp = tp) or spreads them whole over TP (etp 1, ep tp).
            if (!allowed(f.etp, etp) || (c.runtime_only && model.is_moe() && tp > 1 && etp != tp &&
                                         !(etp == 1 && ep == tp)))
              continue;
            if (dp % ep != 0 && etp != 1) continue;  // ep = tp outside DP: whole experts only
            for (int mb = 1; mb <= c.max_micro_batch; mb *= 2) {
              if (!allowed(f.micro_batch, mb)) continue;
              const int64_t per_step = static_cast<int64_t>(dp) * mb;
              if (job.global_batch % per_step != 0 && mb > 1 && !f.micro_batch) continue;
              const int64_t mbs = std::max<int64_t>(job.global_batch / per_step, 1);
              if (!allowed(f.num_micro_batches, mbs)) continue;
              for (Recompute rc : {Recompute::none, Recompute::selective, Recompute::full}) {
                if (!allowed(f.recompute, rc)) continue;
                if (rc != Recompute::none && !c.allow_recompute) continue;
                if (rc == Recompute::selective && c.runtime_only) continue;
                // With flash attention there is no score matrix to drop: selective == none.
                if (rc == Recompute::selective && model.flash_attention && !f.recompute) continue;
                for (const auto& [zero1, pairs] : {std::pair{false, false}, std::pair{false, true},
                                                   std::pair{true, false}, std::pair{true, true}}) {
                  if (!allowed(f.zero1, zero1) || !allowed(f.interleave_pairs, pairs)) continue;
                  Layout l;
                  l.tp = tp;
                  l.pp = pp;
                  l.vpp = vpp;
                  l.ep = ep;
                  l.etp = etp;
                  l.dp = dp;
                  l.micro_batch = mb;
                  l.num_micro_batches = mbs;
                  l.recompute = rc;
                  l.zero1 = zero1;
                  l.sequence_parallel = tp > 1 && c.sequence_parallel && !c.runtime_only;
                  l.interleave_pairs = pairs;
                  // Unasked, pairs are offered only for this runtime and where it runs them.
                  // Asked for, they imply TP > 1 and PP 1; a layout with too few micro-batches
                  // to pair is refused with the reason.
                  if (pairs && !f.interleave_pairs &&
                      (!c.runtime_only || !interleave_pairs_problem(l).empty()))
                    continue;
                  if (pairs && (tp == 1 || pp > 1)) continue;
                  Evaluation e = evaluate(model, job, cluster, l, c.memory_headroom);
                  (e.feasible ? result.ranked : result.refused).push_back(std::move(e));
                }
              }
            }
          }
        }
      }
    }
  }
  // Best throughput first; ties go to less memory.
  std::stable_sort(result.ranked.begin(), result.ranked.end(),
                   [](const Evaluation& a, const Evaluation& b) {
                     if (a.tokens_per_s != b.tokens_per_s) return a.tokens_per_s > b.tokens_per_s;
                     return a.memory.total() < b.memory.total();
                   });
  std::stable_sort(result.refused.begin(), result.refused.end(),
                   [](const Evaluation& a, const Evaluation& b) {
                     if (a.valid != b.valid) return a.valid;
                     return a.memory.total() < b.memory.total();
                   });
  return result;
}

std::string no_fit_advice(const ModelShape& model, const Job& job, const Cluster& cluster,
                          const Constraints& c, const SearchResult& result) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const Evaluation* leanest = nullptr;
  for (const auto& e : result.refused)
    if (e.valid && (leanest == nullptr || e.memory.total() < leanest->memory.total())) leanest = &e;
  if (leanest == nullptr) {
    std::string reason = result.refused.empty() ? "no layout satisfies the fixed sizes"
                                                : result.refused.front().reason;
    return concat("no valid layout for ", cluster.gpus, " GPUs: ", reason,
                  " (relax --tp/--pp/--ep or change --gpus)");
  }
  const double usable = cluster.gpu.memory_gib * kGiB * (1.0 - c.memory_headroom);
  std::string advice =
      concat("the model fits nowhere: the leanest layout (", layout_label(leanest->layout),
             ") needs ", std::round(leanest->memory.total() / kGiB * 10) / 10, " GiB per GPU, ",
             std::round((leanest->memory.total() - usable) / kGiB * 10) / 10, " GiB more than the ",
             std::round(usable / kGiB * 10) / 10, " GiB usable");
  std::vector<std::string> fixes;
  // More GPUs: the smallest multiple (up to 64x) that fits.
  for (int factor = 2; factor <= 64; factor *= 2) {
    Cluster bigger = cluster;
    bigger.gpus = cluster.gpus * factor;
    Constraints loose = c;
    loose.fixed.dp.reset();
    if (!search_layouts(model, job, bigger, loose).ranked.empty()) {
      fixes.push_back(concat(bigger.gpus, " GPUs"));
      break;
    }
  }
  if (!c.allow_recompute || c.fixed.recompute) {
    Constraints with = c;
    with.allow_recompute = true;
    with.fixed.recompute.reset();
    if (!search_layouts(model, job, cluster, with).ranked.empty())
      fixes.push_back("allowing activation recompute");
  }
  for (int64_t shorter = job.seq / 2; shorter >= 128; shorter /= 2) {
    Job short_job = job;
    short_job.seq = shorter;
    if (!search_layouts(model, short_job, cluster, c).ranked.empty()) {
      fixes.push_back(concat("--seq ", shorter));
      break;
    }
  }
  if (fixes.empty()) {
    // Even sharded perfectly, the training state needs this many GPUs.
    const double state_bytes =
        static_cast<double>(count_parameters(model).total) *
        (job.weight_bytes + job.grad_bytes + job.master_bytes + job.optimizer_state_bytes);
    return advice + concat("; nothing tried (up to 64x GPUs, recompute, shorter sequence) fits: ",
                           "weights, gradients and optimizer state alone need at least ",
                           static_cast<int64_t>(std::ceil(state_bytes / usable)), " ",
                           cluster.gpu.name, " GPUs");
  }
  advice += "; would fit with ";
  for (size_t i = 0; i < fixes.size(); ++i) advice += (i ? " or " : "") + fixes[i];
  return advice;
}

}  // namespace metamorph::planner
