#include "planner/layout.hpp"

#include <cctype>
#include <vector>

#include "runtime/core/error.hpp"

namespace metamorph::planner {

const char* recompute_name(Recompute recompute) {
  switch (recompute) {
    case Recompute::none:
      return "none";
    case Recompute::selective:
      return "selective";
    case Recompute::full:
      return "full";
  }
  return "none";
}

Recompute parse_recompute(const std::string& text) {
  if (text == "none") return Recompute::none;
  if (text == "selective" || text == "sel") return Recompute::selective;
  if (text == "full") return Recompute::full;
  throw InputError(concat("recompute '", text, "' is not one of none, selective, full"));
}

const char* objective_name(Objective objective) {
  return objective == Objective::diffusion ? "diffusion" : "ar";
}

Objective parse_objective(const std::string& text) {
  if (text == "ar") return Objective::ar;
  if (text == "diffusion") return Objective::diffusion;
  throw InputError(concat("--objective '", text, "' is not one of ar, diffusion"));
}

AttentionScratch parse_attention_scratch(const std::string& text) {
  if (text == "cudnn-deterministic") return AttentionScratch::cudnn_deterministic;
  if (text == "cudnn") return AttentionScratch::cudnn_atomic;
  if (text == "kernels") return AttentionScratch::none;
  throw InputError(
      concat("--gpu-attention '", text, "' is not one of cudnn-deterministic, cudnn, kernels"));
}

std::string layout_label(const Layout& l) {
  const char* rc = l.recompute == Recompute::none        ? "none"
                   : l.recompute == Recompute::selective ? "sel"
                                                         : "full";
  return concat("tp", l.tp, ".pp", l.pp, ".vpp", l.vpp, ".ep", l.ep, ".etp", l.etp, ".dp", l.dp,
                ".mb", l.micro_batch, ".", rc, l.zero1 ? ".z1" : ".z0",
                l.interleave_pairs ? ".pairs" : "");
}

std::string interleave_pairs_problem(const Layout& l) {
  if (l.tp <= 1)
    return concat("interleaved pairs hide tensor-parallel all-reduces and need TP > 1, got TP ",
                  l.tp);
  if (l.pp != 1) return concat("interleaved pairs run on one pipeline stage (PP 1), got PP ", l.pp);
  if (l.num_micro_batches < 2)
    return concat("interleaved pairs need at least two micro-batches per replica, got ",
                  l.num_micro_batches);
  return {};
}

bool LayoutFilter::matches(const Layout& l) const {
  return (!tp || *tp == l.tp) && (!pp || *pp == l.pp) && (!vpp || *vpp == l.vpp) &&
         (!ep || *ep == l.ep) && (!etp || *etp == l.etp) && (!dp || *dp == l.dp) &&
         (!micro_batch || *micro_batch == l.micro_batch) &&
         (!num_micro_batches || *num_micro_batches == l.num_micro_batches) &&
         (!recompute || *recompute == l.recompute) && (!zero1 || *zero1 == l.zero1) &&
         (!interleave_pairs || *interleave_pairs == l.interleave_pairs);
}

namespace {

std::vector<std::string> tokens_of(const std::string& text) {
  std::vector<std::string> tokens;
  std::string current;
  for (char c : text) {
    if (c == '.' || c == ',' || c == '-' || c == ' ' || c == '_') {
      if (!current.empty()) tokens.push_back(current);
      current.clear();
    } else {
      current += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  if (!current.empty()) tokens.push_back(current);
  return tokens;
}

}  // namespace

LayoutFilter parse_layout_filter(const std::string& text) {
  LayoutFilter f;
  const auto bad = [&](const std::string& token) {
    return InputError(
        concat("layout '", text, "': cannot read '", token,
               "'; use tokens like tp8 pp4 vpp2 ep8 etp1 dp2 mb1 m32, ",
               "none|sel|full, z0|z1 and pairs|nopairs, e.g. tp8.pp4.dp2.mb1.sel.z1"));
  };
  const auto tokens = tokens_of(text);
  require(!tokens.empty(), "layout '", text, "' is empty; e.g. tp8.pp4.dp2.mb1.sel.z1");
  for (const auto& token : tokens) {
    if (token == "none" || token == "sel" || token == "selective" || token == "full") {
      f.recompute = parse_recompute(token);
      continue;
    }
    if (token == "z1" || token == "zero1") {
      f.zero1 = true;
      continue;
    }
    if (token == "z0" || token == "nozero1") {
      f.zero1 = false;
      continue;
    }
    if (token == "pairs" || token == "nopairs") {
      f.interleave_pairs = token == "pairs";
      continue;
    }
    size_t digits = 0;
    while (digits < token.size() && std::isalpha(static_cast<unsigned char>(token[digits])))
      ++digits;
    const std::string key = token.substr(0, digits);
    const std::string number = token.substr(digits);
    if (number.empty() || number.find_first_not_of("0123456789") != std::string::npos ||
        number.size() > 9)
      throw bad(token);
    const int value = std::stoi(number);
    if (value < 1) throw bad(token);
    if (key == "tp")
      f.tp = value;
    else if (key == "pp")
      f.pp = value;
    else if (key == "vpp" || key == "v")
      f.vpp = value;
    else if (key == "ep")
      f.ep = value;
    else if (key == "etp")
      f.etp = value;
    else if (key == "dp")
      f.dp = value;
    else if (key == "mb" || key == "b")
      f.micro_batch = value;
    else if (key == "m")
      f.num_micro_batches = value;
    else
      throw bad(token);
  }
  return f;
}

void set_precision(Job& job, const std::string& precision) {
  if (precision == "bf16") {
    job.weight_bytes = 2;
    job.grad_bytes = 4;
    job.master_bytes = 4;
    job.activation_bytes = 2;
  } else if (precision == "fp32") {
    job.weight_bytes = 4;
    job.grad_bytes = 4;
    job.master_bytes = 0;
    job.activation_bytes = 4;
  } else {
    throw InputError(concat("--precision '", precision, "' is not one of bf16, fp32"));
  }
}

void set_optimizer(Job& job, const std::string& optimizer) {
  if (optimizer == "adamw" || optimizer == "adam") {
    job.optimizer_state_bytes = 8;
  } else if (optimizer == "sgd") {
    job.optimizer_state_bytes = 4;
  } else {
    throw InputError(concat("--optimizer '", optimizer, "' is not one of adamw, sgd"));
  }
}

}  // namespace metamorph::planner
