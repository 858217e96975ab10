#pragma once
// The router's backward (route_backward, models/router.hpp) checked by central differences of
// its forward, shared by the router tests (learned and forced routing).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "models/router.hpp"
#include "runtime/rng/philox.hpp"

namespace metamorph::test {

// n draws of N(0, std^2) from the counter-based stream (seed, purpose).
inline std::vector<float> normal_values(std::uint64_t seed, std::size_t n, const char* purpose,
                                        double std) {
  const rng::Stream s(seed, purpose);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(std * s.normal(i));
  return v;
}

// The scalar route_backward differentiates: sum(dgate * gate) + scale * (aux + z), with dgate
// held fixed (it stands for the gradient flowing from the experts' outputs).
inline double router_objective(const std::vector<float>& logits, std::int64_t tokens,
                               const MoeConfig& c, const float* bias,
                               const std::vector<float>& dgate, float scale) {
  const Routing r = route(logits.data(), tokens, c, bias);
  double sum = scale * (r.aux_loss + r.z_loss);
  for (std::size_t i = 0; i < r.gate.size(); ++i) sum += static_cast<double>(dgate[i]) * r.gate[i];
  return sum;
}

// Every logit's gradient against the central difference. The choice of experts is piecewise
// constant: where a step crosses a tie the logit has no derivative and is skipped, unless
// choice_fixed says the choice must never move (forced routing), which is then checked.
inline void expect_router_backward_matches_central_differences(
    std::vector<float> logits, std::int64_t tokens, const MoeConfig& c, const float* bias,
    const std::vector<float>& dgate, float scale, bool choice_fixed, const std::string& label) {
  const Routing r = route(logits.data(), tokens, c, bias);
  std::vector<float> dlogits(logits.size());
  route_backward(r, logits.data(), c, dgate.data(), scale, dlogits.data());
  const float eps = 1e-3f;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const float saved = logits[i];
    logits[i] = saved + eps;
    const bool up_same = route(logits.data(), tokens, c, bias).expert == r.expert;
    const double plus = router_objective(logits, tokens, c, bias, dgate, scale);
    logits[i] = saved - eps;
    const bool down_same = route(logits.data(), tokens, c, bias).expert == r.expert;
    const double minus = router_objective(logits, tokens, c, bias, dgate, scale);
    const double step = static_cast<double>(saved + eps) - static_cast<double>(saved - eps);
    logits[i] = saved;
    if (choice_fixed) {
      ASSERT_TRUE(up_same && down_same) << label << ": the forced choice moved at logit " << i;
    } else if (!up_same || !down_same) {
      continue;
    }
    EXPECT_NEAR(dlogits[i], (plus - minus) / step, 2e-3 * (1.0 + std::abs(dlogits[i])))
        << label << " logit " << i;
  }
}

}  // namespace metamorph::test
