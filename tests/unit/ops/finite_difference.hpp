#pragma once
// Central finite differences for checking an op's backward on its own, independent of PyTorch.
#include <functional>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph::test {

// sum(out * weights), accumulated in double: the scalar objective whose gradient with respect
// to out is `weights`.
double weighted_sum(const Tensor& out, const Tensor& weights);

// d objective / d input[i] for every element of the f32 `input`, by (f(x+h) - f(x-h)) / 2h.
// `objective` must recompute from the current contents of `input`, which is restored after.
std::vector<double> numeric_gradient(Tensor& input, const std::function<double()>& objective,
                                     float step = 1e-2f);

// Finite differences are noisy at the 1e-4 level with fp32 ops; a wrong gradient is off by O(1).
constexpr double kFiniteDifferenceTolerance = 2e-3;

}  // namespace metamorph::test
