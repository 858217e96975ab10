#pragma once
// How the world's ranks split into tensor-, pipeline-, data- and expert-parallel groups.
//
// Rank order follows Megatron-Core, innermost first: TP, then DP, then PP, so that a TP group is
// a run of consecutive ranks (one NVLink island). Expert parallelism is carved out of DP: the
// experts of a layer are spread over EP consecutive DP ranks, and the ranks holding the same
// experts form the expert-data-parallel group. Expert layers may use their own tensor-parallel
// size (ETP); their ranks are ordered ETP, EP, expert-DP, PP inside the same world.
#include <string>
#include <vector>

namespace metamorph {

struct Layout {
  int tp = 1;
  int pp = 1;
  int dp = 1;
  int ep = 1;
  // Tensor-parallel size of expert layers; 0 means "the same as tp" (the usual choice).
  int etp = 0;

  int world_size() const { return tp * pp * dp; }
  int expert_tp() const { return etp == 0 ? tp : etp; }
  // Expert-data-parallel size: the replicas of each expert shard.
  int expert_dp() const { return tp * dp / (expert_tp() * ep); }
  // Whole experts spread over the TP group (--tp T --etp 1 --ep T): the EP group is the TP
  // group (EP rank = TP rank) and the expert-DP group is the DP group.
  bool experts_over_tp() const { return tp > 1 && expert_tp() == 1 && ep == tp; }
  std::string describe() const;  // "tp 2 x pp 2 x dp 2 (ep 2)"
};

// Where one world rank sits in every dimension.
struct Coordinates {
  int tp = 0;
  int dp = 0;
  int pp = 0;
  // Expert layers' coordinates: expert-TP rank, EP rank (which slice of experts), expert-DP rank.
  int etp = 0;
  int ep = 0;
  int edp = 0;
};

// The communicator groups a rank belongs to. model_parallel is TP x PP (the ranks holding one
// complete model replica); embedding joins the first and last pipeline stage of a TP/DP slot
// (tied embeddings), and is the rank alone when pp == 1.
enum class GroupKind { tp, dp, pp, ep, expert_tp, expert_dp, model_parallel, embedding };
inline constexpr GroupKind kAllGroupKinds[] = {GroupKind::tp,
                                               GroupKind::dp,
                                               GroupKind::pp,
                                               GroupKind::ep,
                                               GroupKind::expert_tp,
                                               GroupKind::expert_dp,
                                               GroupKind::model_parallel,
                                               GroupKind::embedding};
std::string group_name(GroupKind kind);

// Checks a layout's own consistency (positive sizes, EP inside DP, ETP x EP inside TP x DP) and
// that it covers world_size ranks. Throws InputError naming the numbers and what would work.
void validate_layout(const Layout& layout, int world_size);

// Checks that the model's dimensions split over the layout: TP divides heads, KV heads and the
// FFN width and leaves every rank some vocabulary rows (the vocabulary need not divide), ETP
// divides the expert FFN width, PP is at most the number of layers, EP divides the number of
// experts (0 experts: a dense model, EP must be 1). expert_ffn = 0 means the experts have the dense
// FFN width. Throws InputError naming the number that fails and the sizes that would work.
void validate_against_model(const Layout& layout, int heads, int kv_heads, int ffn, int vocab,
                            int layers, int experts, int expert_ffn = 0);

// All factorisations tp x pp x dp of world_size, as "tp A pp B dp C" strings (for messages).
std::vector<std::string> layouts_for_world(int world_size);

class Topology {
 public:
  // Validates (validate_layout) before anything else.
  Topology(const Layout& layout, int world_size);

  const Layout& layout() const { return layout_; }
  int world_size() const { return world_size_; }

  Coordinates coordinates(int world_rank) const;
  // The world rank at dense coordinates (tp, dp, pp).
  int rank_of(int tp, int dp, int pp) const;

  // Members of world_rank's group of this kind, as world ranks ordered by their rank inside the
  // group (so position i is group rank i).
  std::vector<int> group(GroupKind kind, int world_rank) const;
  // Every group of this kind; together they cover the world exactly once (except embedding,
  // whose groups cover the first and last stage and leave middle stages alone in their own).
  std::vector<std::vector<int>> all_groups(GroupKind kind) const;

 private:
  void check_rank(int world_rank) const;
  int expert_rank_of(int etp, int ep, int edp, int pp) const;

  Layout layout_;
  int world_size_;
};

}  // namespace metamorph
