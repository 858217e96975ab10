// fast_exp against std::exp in double over its whole normal range, and at its edges.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "runtime/backends/cpu/fast_exp.hpp"

namespace metamorph {
namespace {

TEST(FastExp, RelativeErrorWithinAFewUlpOverTheNormalRange) {
  double worst = 0.0;
  float worst_x = 0.0f;
  const int steps = 1 << 20;
  for (int i = 0; i <= steps; ++i) {
    const float x = -87.3f + 175.3f * static_cast<float>(i) / steps;
    const double exact = std::exp(static_cast<double>(std::min(x, 88.02f)));
    const double rel = std::abs(fast_exp(x) - exact) / exact;
    if (rel > worst) {
      worst = rel;
      worst_x = x;
    }
  }
  EXPECT_LE(worst, 3e-7) << "at x = " << worst_x;
}

TEST(FastExp, EdgesGiveZeroOneAndNaNWithoutOverflow) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(fast_exp(-inf), 0.0f);
  EXPECT_EQ(fast_exp(-100.0f), 0.0f);
  EXPECT_EQ(fast_exp(0.0f), 1.0f);
  EXPECT_TRUE(std::isnan(fast_exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isfinite(fast_exp(1000.0f)));
  EXPECT_GT(fast_exp(1000.0f), 1e38f);
}

TEST(FastExp, ScaledShiftedLoopAndDoubleSum) {
  float x[7] = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  exp_scaled_shifted(x, 7, 0.5f, 1.0f);
  double expected = 0.0;
  for (int i = 0; i < 7; ++i) {
    EXPECT_NEAR(x[i], std::exp(0.5 * i - 1.0), 1e-6 * std::exp(0.5 * i - 1.0));
    expected += x[i];
  }
  EXPECT_NEAR(sum_in_double(x, 7), expected, 1e-12);
}

}  // namespace
}  // namespace metamorph
