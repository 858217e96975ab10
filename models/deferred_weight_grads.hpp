#pragma once
// Weight-gradient GEMMs a block's backward hands back to its caller instead of running them, so
// that the caller can first start the all-reduce of the block's (tensor-parallel partial) input
// gradient and run these GEMMs while the sum is in flight: Megatron's asynchronous TP all-reduce.
// The work writes weight gradients only, which nothing reads before the optimizer step, so when
// it runs changes no value. Each item keeps the tensors it reads alive until it has run.
#include <functional>
#include <utility>
#include <vector>

namespace metamorph {

class DeferredWeightGrads {
 public:
  DeferredWeightGrads() = default;
  DeferredWeightGrads(const DeferredWeightGrads&) = delete;
  DeferredWeightGrads& operator=(const DeferredWeightGrads&) = delete;

  void add(std::function<void()> work) { work_.push_back(std::move(work)); }
  // Runs the work in the order it was added, then drops it with the tensors it kept.
  void run() {
    std::vector<std::function<void()>> work = std::exchange(work_, {});
    for (auto& w : work) w();
  }
  bool empty() const { return work_.empty(); }

 private:
  std::vector<std::function<void()>> work_;
};

// Runs `work` at once when there is no caller to defer it to, else leaves it in `later`.
inline void run_or_defer(DeferredWeightGrads* later, std::function<void()> work) {
  if (later != nullptr)
    later->add(std::move(work));
  else
    work();
}

}  // namespace metamorph
