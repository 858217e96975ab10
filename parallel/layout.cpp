#include "parallel/layout.hpp"

#include <algorithm>
#include <numeric>
#include <sstream>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}

std::string join(const std::vector<int>& values) {
  std::ostringstream out;
  for (std::size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  return out.str();
}

std::string join(const std::vector<std::string>& values) {
  std::string out;
  for (const auto& v : values) out += (out.empty() ? "" : "; ") + v;
  return out;
}

// The sizes s in [1, limit] that divide every number in `dims`.
std::vector<int> common_divisors(const std::vector<int>& dims) {
  int g = 0;
  for (int d : dims) g = std::gcd(g, d);
  return g == 0 ? std::vector<int>{1} : divisors(g);
}

}  // namespace

std::string Layout::describe() const {
  std::ostringstream out;
  out << "tp " << tp << " x pp " << pp << " x dp " << dp;
  if (ep != 1 || etp != 0) out << " (ep " << ep << ", etp " << expert_tp() << ")";
  return out.str();
}

std::string group_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::tp:
      return "tp";
    case GroupKind::dp:
      return "dp";
    case GroupKind::pp:
      return "pp";
    case GroupKind::ep:
      return "ep";
    case GroupKind::expert_tp:
      return "expert_tp";
    case GroupKind::expert_dp:
      return "expert_dp";
    case GroupKind::model_parallel:
      return "model_parallel";
    case GroupKind::embedding:
      return "embedding";
  }
  return "?";
}

std::vector<std::string> layouts_for_world(int world_size) {
  std::vector<std::string> out;
  for (int tp : divisors(world_size))
    for (int pp : divisors(world_size / tp))
      out.push_back(concat("tp ", tp, " pp ", pp, " dp ", world_size / tp / pp));
  return out;
}

void validate_layout(const Layout& layout, int world_size) {
  require(world_size >= 1, "world size must be at least 1, got ", world_size);
  require(layout.tp >= 1, "--tp must be at least 1, got ", layout.tp);
  require(layout.pp >= 1, "--pp must be at least 1, got ", layout.pp);
  require(layout.dp >= 1, "--dp must be at least 1, got ", layout.dp);
  require(layout.ep >= 1, "--ep must be at least 1, got ", layout.ep);
  require(layout.etp >= 0, "--etp must be at least 1 (or 0 for the same as --tp), got ",
          layout.etp);
  const long long product = 1LL * layout.tp * layout.pp * layout.dp;
  if (product != world_size) {
    std::string hint;
    if (world_size % (layout.tp * layout.pp) == 0)
      hint = concat(" (with tp ", layout.tp, " and pp ", layout.pp, ", dp would be ",
                    world_size / (layout.tp * layout.pp), ")");
    throw InputError(concat("layout tp ", layout.tp, " x pp ", layout.pp, " x dp ", layout.dp,
                            " = ", product, " ranks, but the world has ", world_size, hint,
                            "; layouts that fit ", world_size,
                            " ranks: ", join(layouts_for_world(world_size))));
  }
  if (layout.etp == 0 || layout.etp == layout.tp) {
    require(layout.dp % layout.ep == 0, "--ep ", layout.ep, " must divide --dp ", layout.dp,
            " (experts are spread over data-parallel ranks); valid --ep for dp ", layout.dp, ": ",
            join(divisors(layout.dp)));
  } else {
    const int slot = layout.tp * layout.dp;
    require(slot % (layout.etp * layout.ep) == 0, "--etp ", layout.etp, " x --ep ", layout.ep,
            " = ", layout.etp * layout.ep, " must divide tp x dp = ", slot,
            " (the ranks of one pipeline stage); valid etp x ep products: ", join(divisors(slot)));
  }
}

void validate_against_model(const Layout& layout, int heads, int kv_heads, int ffn, int vocab,
                            int layers, int experts, int expert_ffn) {
  require(heads >= 1 && kv_heads >= 1 && ffn >= 1 && vocab >= 1 && layers >= 1 && experts >= 0,
          "model dimensions must be positive: heads ", heads, ", kv_heads ", kv_heads, ", ffn ",
          ffn, ", vocab ", vocab, ", layers ", layers, ", experts ", experts);
  if (expert_ffn == 0) expert_ffn = ffn;
  // The vocabulary need not divide: the last TP ranks hold fewer rows (models/tensor_parallel.hpp).
  const std::vector<int> tp_valid = common_divisors({heads, kv_heads, ffn});
  const auto tp_fail = [&](const char* what, int value) {
    throw InputError(concat("--tp ", layout.tp, " does not divide ", what, " ", value,
                            "; TP sizes that divide heads ", heads, ", kv_heads ", kv_heads,
                            " and ffn ", ffn, ": ", join(tp_valid)));
  };
  if (heads % layout.tp != 0) tp_fail("num_attention_heads", heads);
  if (kv_heads % layout.tp != 0) tp_fail("num_key_value_heads", kv_heads);
  if (ffn % layout.tp != 0) tp_fail("intermediate_size", ffn);
  const int per_rank = (vocab + layout.tp - 1) / layout.tp;
  require(per_rank * (layout.tp - 1) < vocab, "--tp ", layout.tp, " leaves a tensor-parallel ",
          "rank without vocabulary rows (vocab_size ", vocab, ")");
  require(layout.pp <= layers, "--pp ", layout.pp, " exceeds num_hidden_layers ", layers,
          "; every pipeline stage needs at least one layer: valid --pp 1 to ", layers);
  if (experts == 0) {
    require(layout.ep == 1, "--ep ", layout.ep,
            " needs a mixture-of-experts model, but this model is dense; use --ep 1");
  } else {
    require(experts % layout.ep == 0, "--ep ", layout.ep, " does not divide the number of experts ",
            experts, "; valid --ep: ", join(divisors(experts)));
    require(expert_ffn % layout.expert_tp() == 0, "expert tensor-parallel size ",
            layout.expert_tp(), " does not divide the expert FFN width ", expert_ffn,
            "; valid sizes: ", join(divisors(expert_ffn)));
  }
}

Topology::Topology(const Layout& layout, int world_size)
    : layout_(layout), world_size_(world_size) {
  validate_layout(layout, world_size);
}

void Topology::check_rank(int world_rank) const {
  MM_ASSERT(world_rank >= 0 && world_rank < world_size_, "rank ", world_rank, " of a world of ",
            world_size_);
}

Coordinates Topology::coordinates(int world_rank) const {
  check_rank(world_rank);
  const Layout& l = layout_;
  Coordinates c;
  c.tp = world_rank % l.tp;
  c.dp = (world_rank / l.tp) % l.dp;
  c.pp = world_rank / (l.tp * l.dp);
  // Expert layers order the same stage's ranks as ETP, EP, expert-DP.
  const int in_stage = world_rank % (l.tp * l.dp);
  c.etp = in_stage % l.expert_tp();
  c.ep = (in_stage / l.expert_tp()) % l.ep;
  c.edp = in_stage / (l.expert_tp() * l.ep);
  return c;
}

int Topology::rank_of(int tp, int dp, int pp) const {
  MM_ASSERT(tp >= 0 && tp < layout_.tp && dp >= 0 && dp < layout_.dp && pp >= 0 && pp < layout_.pp,
            "coordinates tp ", tp, " dp ", dp, " pp ", pp, " outside ", layout_.describe());
  return tp + layout_.tp * (dp + layout_.dp * pp);
}

int Topology::expert_rank_of(int etp, int ep, int edp, int pp) const {
  return etp + layout_.expert_tp() * (ep + layout_.ep * edp) + layout_.tp * layout_.dp * pp;
}

std::vector<int> Topology::group(GroupKind kind, int world_rank) const {
  const Coordinates c = coordinates(world_rank);
  const Layout& l = layout_;
  std::vector<int> members;
  switch (kind) {
    case GroupKind::tp:
      for (int t = 0; t < l.tp; ++t) members.push_back(rank_of(t, c.dp, c.pp));
      break;
    case GroupKind::dp:
      for (int d = 0; d < l.dp; ++d) members.push_back(rank_of(c.tp, d, c.pp));
      break;
    case GroupKind::pp:
      for (int p = 0; p < l.pp; ++p) members.push_back(rank_of(c.tp, c.dp, p));
      break;
    case GroupKind::model_parallel:
      for (int p = 0; p < l.pp; ++p)
        for (int t = 0; t < l.tp; ++t) members.push_back(rank_of(t, c.dp, p));
      break;
    case GroupKind::embedding:
      members.push_back(rank_of(c.tp, c.dp, 0));
      if (l.pp > 1 && (c.pp == 0 || c.pp == l.pp - 1))
        members.push_back(rank_of(c.tp, c.dp, l.pp - 1));
      else if (l.pp > 1)
        members = {world_rank};
      break;
    case GroupKind::expert_tp:
      for (int t = 0; t < l.expert_tp(); ++t)
        members.push_back(expert_rank_of(t, c.ep, c.edp, c.pp));
      break;
    case GroupKind::ep:
      for (int e = 0; e < l.ep; ++e) members.push_back(expert_rank_of(c.etp, e, c.edp, c.pp));
      break;
    case GroupKind::expert_dp:
      for (int d = 0; d < l.expert_dp(); ++d)
        members.push_back(expert_rank_of(c.etp, c.ep, d, c.pp));
      break;
  }
  return members;
}

std::vector<std::vector<int>> Topology::all_groups(GroupKind kind) const {
  std::vector<std::vector<int>> groups;
  std::vector<bool> seen(static_cast<std::size_t>(world_size_), false);
  for (int r = 0; r < world_size_; ++r) {
    if (seen[static_cast<std::size_t>(r)]) continue;
    groups.push_back(group(kind, r));
    for (int m : groups.back()) seen[static_cast<std::size_t>(m)] = true;
  }
  return groups;
}

}  // namespace metamorph
