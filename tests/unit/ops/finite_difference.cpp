#include "tests/unit/ops/finite_difference.hpp"

#include "runtime/core/error.hpp"

namespace metamorph::test {

double weighted_sum(const Tensor& out, const Tensor& weights) {
  MM_ASSERT(out.numel() == weights.numel(), "weighted_sum sizes");
  const float* o = out.data<float>();
  const float* w = weights.data<float>();
  double sum = 0.0;
  for (std::int64_t i = 0; i < out.numel(); ++i) sum += static_cast<double>(o[i]) * w[i];
  return sum;
}

std::vector<double> numeric_gradient(Tensor& input, const std::function<double()>& objective,
                                     float step) {
  float* x = input.data<float>();
  std::vector<double> grad(static_cast<std::size_t>(input.numel()));
  for (std::int64_t i = 0; i < input.numel(); ++i) {
    const float saved = x[i];
    x[i] = saved + step;
    const double plus = objective();
    x[i] = saved - step;
    const double minus = objective();
    x[i] = saved;
    // The perturbation actually applied, after rounding to float.
    const double applied = static_cast<double>(saved + step) - static_cast<double>(saved - step);
    grad[static_cast<std::size_t>(i)] = (plus - minus) / applied;
  }
  return grad;
}

}  // namespace metamorph::test
