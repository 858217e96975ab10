#pragma once
// How a model splits over a tensor-parallel group (Megatron): column-parallel q/k/v and
// gate/up (rows split), row-parallel o_proj and down_proj (columns split), vocabulary-parallel
// embedding and LM head (rows split); norms replicated. The layers only need the group's sum and
// max all-reduces, passed in as functions so that models/ does not depend on parallel/.
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <utility>

#include "runtime/core/tensor.hpp"

namespace metamorph {

// A sum over the TP group that has been started and not yet waited for. wait() makes the sum
// available to the work queued after it (on a GPU the compute stream waits for the all-reduce's
// event; the host does not block); the destructor waits too, so the tensor is never reused while
// the library still writes it. Default-constructed: nothing in flight.
class PendingSum {
 public:
  PendingSum() = default;
  explicit PendingSum(std::function<void()> wait) : wait_(std::move(wait)) {}
  PendingSum(PendingSum&& other) noexcept : wait_(std::exchange(other.wait_, nullptr)) {}
  PendingSum& operator=(PendingSum&&) = delete;
  PendingSum(const PendingSum&) = delete;
  PendingSum& operator=(const PendingSum&) = delete;
  ~PendingSum() {
    try {
      wait();
    } catch (const std::exception&) {
      // Reached only when no one waited (an exception unwinds): a destructor cannot throw, and
      // the communicator's watchdog reports a failed operation itself.
    }
  }
  void wait() {
    if (auto w = std::exchange(wait_, nullptr)) w();
  }

 private:
  std::function<void()> wait_;
};

struct TensorParallel {
  int rank = 0;
  int size = 1;
  std::function<void(Tensor&)> all_reduce_sum;  // in place over the group; unused when size 1
  std::function<void(Tensor&)> all_reduce_max;
  // Starts the in-place sum and returns what waits for it (the backward's input gradients are
  // summed while the weight-gradient GEMMs run). Unset: start_sum sums at once.
  std::function<std::function<void()>(Tensor&)> start_all_reduce_sum;

  bool active() const { return size > 1; }
  void sum(Tensor& x) const {
    if (active()) all_reduce_sum(x);
  }
  // x must stay untouched until the returned sum has been waited for.
  PendingSum start_sum(Tensor& x) const {
    if (!active()) return {};
    if (!start_all_reduce_sum) {
      all_reduce_sum(x);
      return {};
    }
    return PendingSum(start_all_reduce_sum(x));
  }
  void max(Tensor& x) const {
    if (active()) all_reduce_max(x);
  }
};

// The dimension of `name` split over TP ranks, or -1 when every rank holds all of it.
int tp_split_dim(const std::string& name);
// The vocabulary-parallel tensors (embedding, LM head), whose split dimension is the vocabulary.
bool is_vocab_parallel(const std::string& name);

// The rows a TP rank holds of a vocabulary of `vocab` ids. Megatron pads the vocabulary to a
// multiple of the TP size; here the padding is never materialised: every rank holds
// ceil(vocab / size) rows except the last ones, which hold what is left. So no padded logit
// exists to be predicted or counted, the loss is the single-rank loss, and checkpoints keep the
// real vocabulary (block diffusion's [MASK] makes vocabularies like 2049 common).
struct VocabShard {
  std::int64_t offset = 0;
  std::int64_t rows = 0;
};
// Throws InputError when a rank would hold no rows (vocab <= (size - 1) * ceil(vocab / size)).
VocabShard vocab_shard(std::int64_t vocab, int size, int rank);
// Replicated parameters whose gradient each TP rank only sees part of (QK-norm weights act on
// the rank's own heads; MoE routers see the experts' partial outputs) and which must be summed
// over the group.
bool tp_partial_gradient(const std::string& name);

}  // namespace metamorph
