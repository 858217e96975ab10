#pragma once
// e^x in float without a libm call, so loops over it vectorise (softmax, cross-entropy,
// sigmoid spend most of their time in exp). Cody-Waite range reduction x = n ln2 + r,
// |r| <= ln2/2, and Cephes' degree-6 polynomial for e^r: relative error within a few ulp.
// Domain: x < -87.33 (including -inf) gives 0; x > 88.02 saturates at e^88.02 (about 1.6e38)
// instead of overflowing; NaN stays NaN.
#include <algorithm>
#include <bit>
#include <cstdint>

namespace metamorph {

inline float fast_exp(float x) {
  constexpr float kLow = -87.33654f;  // below: e^x is subnormal; return 0
  constexpr float kHigh = 88.02969f;  // 127 ln2: keeps 2^n a normal float
  const float xc = std::min(std::max(x, kLow), kHigh);
  // n = round(x / ln2) by the 1.5 * 2^23 trick (round to nearest, no libm call).
  constexpr float kShifter = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + kShifter) - kShifter;
  float r = xc - n * 0.693359375f;  // ln2 split in two for an exact first product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const auto exponent = static_cast<std::int32_t>(n) + 127;
  const float scale = std::bit_cast<float>(static_cast<std::uint32_t>(exponent) << 23);
  return x < kLow ? 0.0f : p * scale;
}

// x[i] = e^(x[i] * scale - shift) in place; the loop the softmax-like ops spend their time in.
// (It vectorises only where comparisons may be if-converted: this folder's CMakeLists.txt
// compiles with -fno-trapping-math, which changes no result.)
inline void exp_scaled_shifted(float* x, std::int64_t n, float scale, float shift) {
  for (std::int64_t i = 0; i < n; ++i) x[i] = fast_exp(x[i] * scale - shift);
}

// Sum in double with four independent accumulators, in a fixed order.
inline double sum_in_double(const float* x, std::int64_t n) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int lane = 0; lane < 4; ++lane) acc[lane] += x[i + lane];
  for (; i < n; ++i) acc[0] += x[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace metamorph
