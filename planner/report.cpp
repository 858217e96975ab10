#include "planner/report.hpp"

#include <algorithm>
#include <cctype>
#include <iomanip>
#include <map>
#include <ostream>
#include <sstream>

#include "runtime/core/error.hpp"

namespace metamorph::planner {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string fixed(double value, int digits) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << value;
  return out.str();
}

std::string gib(double bytes) {
  return fixed(bytes / kGiB, 1);
}

std::string percent(double part, double whole) {
  return whole > 0 ? fixed(100.0 * part / whole, 0) + "%" : "-";
}

// The biggest non-compute term of a step, named.
std::pair<std::string, double> largest_overhead(const StepTime& t) {
  const std::pair<std::string, double> terms[] = {{"TP communication", t.tp_comm},
                                                  {"pipeline bubble", t.pp_bubble},
                                                  {"pipeline sends", t.pp_p2p},
                                                  {"EP all-to-all", t.ep_all_to_all},
                                                  {"exposed DP communication", t.dp_exposed},
                                                  {"optimizer step", t.optimizer}};
  return *std::max_element(std::begin(terms), std::end(terms),
                           [](const auto& a, const auto& b) { return a.second < b.second; });
}

}  // namespace

void print_table(std::ostream& out, const SearchResult& result, size_t top) {
  out << std::left << std::setw(48) << "layout" << std::right << std::setw(6) << "m" << std::setw(8)
      << "weights" << std::setw(7) << "grads" << std::setw(7) << "optim" << std::setw(7) << "activ"
      << std::setw(7) << "comm" << std::setw(7) << "work" << std::setw(8) << "total" << std::setw(9)
      << "step s" << std::setw(8) << "compute" << std::setw(6) << "tp" << std::setw(7) << "bubble"
      << std::setw(6) << "ep" << std::setw(6) << "dp" << std::setw(12) << "tokens/s" << std::setw(7)
      << "MFU"
      << "\n";
  out << std::left << std::setw(48) << "" << std::right << std::setw(6) << "" << std::setw(52)
      << "per-GPU memory, GiB" << std::setw(45) << "step time split"
      << "\n";
  for (size_t i = 0; i < std::min(top, result.ranked.size()); ++i) {
    const Evaluation& e = result.ranked[i];
    const StepTime& t = e.time;
    const double total = t.total();
    out << std::left << std::setw(48) << layout_label(e.layout) << std::right << std::setw(6)
        << e.layout.num_micro_batches << std::setw(8) << gib(e.memory.weights) << std::setw(7)
        << gib(e.memory.grads) << std::setw(7) << gib(e.memory.optimizer) << std::setw(7)
        << gib(e.memory.activations) << std::setw(7) << gib(e.memory.comm_buffers) << std::setw(7)
        << gib(e.memory.workspace) << std::setw(8) << gib(e.memory.total()) << std::setw(9)
        << fixed(total, 3) << std::setw(8) << percent(t.compute, total) << std::setw(6)
        << percent(t.tp_comm, total) << std::setw(7) << percent(t.pp_bubble + t.pp_p2p, total)
        << std::setw(6) << percent(t.ep_all_to_all, total) << std::setw(6)
        << percent(t.dp_exposed, total) << std::setw(12) << fixed(e.tokens_per_s, 0) << std::setw(7)
        << fixed(100 * e.mfu, 1) + "%"
        << "\n";
  }
}

std::string explain_winner(const SearchResult& result, const Cluster& cluster) {
  if (result.ranked.empty()) return "no layout fits";
  const Evaluation& best = result.ranked.front();
  std::ostringstream out;
  out << "Best: " << layout_label(best.layout) << " at " << fixed(best.tokens_per_s, 0)
      << " tokens/s, " << fixed(100 * best.mfu, 1) << "% MFU, " << gib(best.memory.total())
      << " of " << fixed(cluster.gpu.memory_gib, 0) << " GiB per GPU.\n";
  // The best layout of a different model-parallel shape, to say what the winner avoids.
  for (const auto& other : result.ranked) {
    const Layout& a = best.layout;
    const Layout& b = other.layout;
    if (a.tp == b.tp && a.pp == b.pp && a.ep == b.ep) continue;
    const auto [name, seconds] = largest_overhead(other.time);
    out << "It beats the best "
        << "tp" << b.tp << ".pp" << b.pp << ".ep" << b.ep << " layout by "
        << fixed(100.0 * (best.tokens_per_s / other.tokens_per_s - 1), 1) << "%, which loses "
        << percent(seconds, other.time.total()) << " of its step to " << name << ".\n";
    break;
  }
  const auto [name, seconds] = largest_overhead(best.time);
  out << "Limits: compute is " << percent(best.time.compute, best.time.total())
      << " of the step; the largest overhead is " << name << " ("
      << percent(seconds, best.time.total()) << ")";
  const double usable = cluster.gpu.memory_gib * kGiB;
  if (best.memory.total() > 0.85 * usable) out << "; memory is nearly full";
  if (best.layout.recompute != Recompute::none)
    out << "; it needs " << recompute_name(best.layout.recompute)
        << " recompute to fit the activations";
  if (best.layout.interleave_pairs)
    out << "; it runs the micro-batches in interleaved pairs (train --interleave-pairs), which "
           "hide part of the TP all-reduces and hold two micro-batches' activations";
  out << ".\n";
  return out.str();
}

void print_breakdown(std::ostream& out, const Evaluation& e, const Cluster& cluster) {
  const Layout& l = e.layout;
  out << "layout " << layout_label(l) << ": TP " << l.tp
      << (l.sequence_parallel ? " (sequence parallel)" : "") << ", PP " << l.pp << " x " << l.vpp
      << " virtual, DP " << l.dp << ", EP " << l.ep << ", expert TP " << l.etp << " (expert DP "
      << l.expert_dp() << "), micro-batch " << l.micro_batch << " x " << l.num_micro_batches
      << ", recompute " << recompute_name(l.recompute) << ", ZeRO-1 " << (l.zero1 ? "on" : "off")
      << ", interleaved pairs " << (l.interleave_pairs ? "on" : "off") << "\n";
  if (!e.valid) {
    out << "invalid: " << e.reason << "\n";
    return;
  }
  out << (e.feasible ? "fits" : "does not fit: " + e.reason) << "\n\n";
  out << "memory per GPU (peak rank: pipeline stage " << e.peak_stage << ")\n";
  const std::pair<const char*, double> memory[] = {
      {"weights", e.memory.weights},           {"gradients", e.memory.grads},
      {"optimizer state", e.memory.optimizer}, {"activations", e.memory.activations},
      {"comm buffers", e.memory.comm_buffers}, {"workspace", e.memory.workspace}};
  for (const auto& [name, bytes] : memory)
    out << "  " << std::left << std::setw(18) << name << std::right << std::setw(10) << gib(bytes)
        << " GiB\n";
  out << "  " << std::left << std::setw(18) << "total" << std::right << std::setw(10)
      << gib(e.memory.total()) << " GiB of " << fixed(cluster.gpu.memory_gib, 0) << "\n\n";
  out << "step time\n";
  const std::pair<const char*, double> time[] = {{"compute", e.time.compute},
                                                 {"TP comm", e.time.tp_comm},
                                                 {"PP bubble", e.time.pp_bubble},
                                                 {"PP sends", e.time.pp_p2p},
                                                 {"EP all-to-all", e.time.ep_all_to_all},
                                                 {"exposed DP comm", e.time.dp_exposed},
                                                 {"optimizer", e.time.optimizer}};
  for (const auto& [name, seconds] : time)
    out << "  " << std::left << std::setw(18) << name << std::right << std::setw(10)
        << fixed(seconds * 1e3, 1) << " ms  " << std::setw(4) << percent(seconds, e.time.total())
        << "\n";
  out << "  " << std::left << std::setw(18) << "total" << std::right << std::setw(10)
      << fixed(e.time.total() * 1e3, 1) << " ms\n";
  out << "  tokens/s " << fixed(e.tokens_per_s, 0) << ", MFU " << fixed(100 * e.mfu, 1) << "%\n\n";
  out << "communication per rank per step (stage " << e.peak_stage << ")\n";
  for (const auto& c : e.comm.entries)
    out << "  " << std::left << std::setw(4) << c.group << std::setw(26) << c.op << std::right
        << " group " << std::setw(4) << c.group_size << "  x" << std::setw(6) << c.count
        << "  message " << std::setw(10) << fixed(c.message_bytes / 1048576.0, 2) << " MiB"
        << "  total " << std::setw(10) << fixed(c.bytes_per_rank / kGiB, 3) << " GiB\n";
}

void print_csv(std::ostream& out, const SearchResult& result, size_t top, bool with_refused) {
  out << "layout,tp,pp,vpp,ep,etp,dp,micro_batch,num_micro_batches,recompute,zero1,"
         "interleave_pairs,feasible,"
         "weights_bytes,grads_bytes,optimizer_bytes,activations_bytes,comm_buffer_bytes,"
         "workspace_bytes,total_bytes,step_time_s,compute_s,tp_comm_s,pp_bubble_s,pp_p2p_s,"
         "ep_all_to_all_s,dp_exposed_s,tokens_per_s,mfu,reason\n";
  const auto row = [&](const Evaluation& e) {
    const Layout& l = e.layout;
    out << layout_label(l) << "," << l.tp << "," << l.pp << "," << l.vpp << "," << l.ep << ","
        << l.etp << "," << l.dp << "," << l.micro_batch << "," << l.num_micro_batches << ","
        << recompute_name(l.recompute) << "," << (l.zero1 ? 1 : 0) << ","
        << (l.interleave_pairs ? 1 : 0) << "," << (e.feasible ? 1 : 0) << "," << e.memory.weights
        << "," << e.memory.grads << "," << e.memory.optimizer << "," << e.memory.activations << ","
        << e.memory.comm_buffers << "," << e.memory.workspace << "," << e.memory.total() << ","
        << e.time.total() << "," << e.time.compute << "," << e.time.tp_comm << ","
        << e.time.pp_bubble << "," << e.time.pp_p2p << "," << e.time.ep_all_to_all << ","
        << e.time.dp_exposed << "," << e.tokens_per_s << "," << e.mfu << ",\"" << e.reason
        << "\"\n";
  };
  for (size_t i = 0; i < std::min(top, result.ranked.size()); ++i) row(result.ranked[i]);
  if (with_refused)
    for (const auto& e : result.refused) row(e);
}

std::string refusal_summary(const SearchResult& result) {
  std::map<std::string, size_t> kinds;
  for (const auto& e : result.refused) {
    // The reason's shape without its numbers: "attention heads not divisible by TP N".
    std::string kind;
    int depth = 0;
    for (char c : e.reason) {
      if (c == '(') ++depth;
      if (depth == 0) {
        const bool digit = std::isdigit(static_cast<unsigned char>(c)) || c == '.';
        if (!digit)
          kind += c;
        else if (kind.empty() || kind.back() != 'N')
          kind += 'N';
      }
      if (c == ')') --depth;
    }
    if (kind.rfind("out of memory", 0) == 0) kind = "out of memory";
    std::string collapsed;
    for (char c : kind)
      if (!(c == ' ' && (collapsed.empty() || collapsed.back() == ' '))) collapsed += c;
    while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    kind = collapsed;
    ++kinds[kind];
  }
  std::ostringstream out;
  out << result.candidates() << " candidates, " << result.ranked.size() << " fit, "
      << result.refused.size() << " refused";
  if (!kinds.empty()) {
    out << " (";
    bool first = true;
    for (const auto& [kind, count] : kinds) {
      out << (first ? "" : "; ") << count << " x " << kind;
      first = false;
    }
    out << ")";
  }
  return out.str();
}

}  // namespace metamorph::planner
