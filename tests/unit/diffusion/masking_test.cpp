// Masking schedules and noise sampling: the closed forms on hand-worked cases, and the empirical
// per-position mask rates of many Philox draws against the formulas (binomial z-scores).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/core/error.hpp"
#include "runtime/diffusion/mask_schedule.hpp"
#include "runtime/diffusion/noise.hpp"

namespace metamorph::diffusion {
namespace {

MaskingOptions position_dependent(double beta) {
  return {MaskSchedule::position_dependent, beta};
}

TEST(MaskSchedule, UniformIsTEverywhere) {
  for (double r : block_mask_rates({}, 0.37, 8, 8)) EXPECT_DOUBLE_EQ(r, 0.37);
}

TEST(MaskSchedule, PositionDependentHandWorked) {
  // B = 2, t = 0.5, beta = 2: w = [1, e^0.5], p = 2 t w / sum(w).
  const auto r = block_mask_rates(position_dependent(2.0), 0.5, 2, 2);
  const double e = std::exp(0.5);
  EXPECT_NEAR(r[0], 1.0 / (1.0 + e), 1e-12);
  EXPECT_NEAR(r[1], e / (1.0 + e), 1e-12);
  // B = 2, t = 0.9, beta = 20: w = [1, e^1]; p_1 = 1.8 e / (1 + e) > 1 is clipped to 1 and the
  // mass it loses goes to p_0 = 1.8 - 1.
  const auto c = block_mask_rates(position_dependent(20.0), 0.9, 2, 2);
  EXPECT_NEAR(c[1], 1.0, 1e-12);
  EXPECT_NEAR(c[0], 0.8, 1e-12);
}

TEST(MaskSchedule, PositionDependentKeepsMeanIncreasesAndIsUniformAtOne) {
  for (double beta : {0.5, 2.0, 8.0, 40.0})
    for (double t : {0.001, 0.2, 0.5, 0.8, 0.95, 1.0})
      for (std::int64_t length : {1, 3, 8}) {
        const auto r = block_mask_rates(position_dependent(beta), t, length, 8);
        const double mean = std::accumulate(r.begin(), r.end(), 0.0) / static_cast<double>(length);
        EXPECT_NEAR(mean, t, 1e-12) << "beta " << beta << " t " << t << " length " << length;
        for (std::size_t i = 0; i < r.size(); ++i) {
          EXPECT_GE(r[i], 0.0);
          EXPECT_LE(r[i], 1.0);
          if (i > 0) {
            EXPECT_GE(r[i], r[i - 1] - 1e-15);
          }
          if (t == 1.0) {
            EXPECT_DOUBLE_EQ(r[i], 1.0);
          }
        }
      }
  for (double r : block_mask_rates(position_dependent(0.0), 0.3, 5, 8)) EXPECT_NEAR(r, 0.3, 1e-15);
}

TEST(MaskSchedule, BadNamesAndBetaAreInputErrors) {
  EXPECT_THROW(parse_mask_schedule("linear"), InputError);
  EXPECT_EQ(parse_mask_schedule("position-dependent"), MaskSchedule::position_dependent);
  EXPECT_THROW(validate(position_dependent(-1.0)), InputError);
  EXPECT_THROW(parse_noise_sampling("sobol"), InputError);
  NoiseOptions bad;
  bad.eps = 0.0;
  EXPECT_THROW(validate(bad), InputError);
  EXPECT_THROW(NoiseSampler(1, 0, {}, {}, 16, 65, 4), InputError);
  EXPECT_THROW(NoiseSampler(1, 0, {}, {}, 16, 0, 4), InputError);
}

// Empirical mask frequency per position against sum_s p_i(t_s) over the drawn levels: the
// binomial sum has variance sum_s p(1 - p), so each position gets a z-score.
void expect_rates_match(const MaskingOptions& masking, const NoiseOptions& noise) {
  const std::int64_t block = 8, seq = 29, samples = 3000;  // last block is partial (5 of 8)
  NoiseSampler sampler(42, 7, noise, masking, seq, block, samples);
  std::vector<double> hits(seq, 0.0), expected(seq, 0.0), variance(seq, 0.0);
  for (std::int64_t s = 0; s < samples; ++s) {
    const SequenceNoise draw = sampler.draw(s);
    for (std::int64_t b = 0; b < sampler.blocks(); ++b) {
      const std::int64_t begin = b * block, length = std::min(block, seq - begin);
      const auto rates = block_mask_rates(masking, sampler.noise_level(s, b), length, block);
      for (std::int64_t i = 0; i < length; ++i) {
        const auto at = static_cast<std::size_t>(begin + i);
        const double p = rates[static_cast<std::size_t>(i)];
        hits[at] += draw.masked[at] ? 1.0 : 0.0;
        expected[at] += p;
        variance[at] += p * (1.0 - p);
        EXPECT_DOUBLE_EQ(draw.t[at], sampler.noise_level(s, b));
      }
    }
  }
  for (std::int64_t i = 0; i < seq; ++i) {
    const auto at = static_cast<std::size_t>(i);
    const double z = (hits[at] - expected[at]) / std::sqrt(std::max(variance[at], 1e-12));
    EXPECT_LT(std::abs(z), 5.0) << "position " << i << " hits " << hits[at] << " expected "
                                << expected[at];
  }
  // Position-dependent: the last position of a full block is masked clearly more often than
  // the first (averaged over t), uniform: equally often.
  const double ratio = hits[7] / std::max(hits[0], 1.0);
  if (masking.schedule == MaskSchedule::position_dependent && masking.beta >= 2.0) {
    EXPECT_GT(ratio, 1.2);
  }
  if (masking.schedule == MaskSchedule::uniform) {
    EXPECT_NEAR(ratio, 1.0, 0.1);
  }
}

TEST(MaskStatistics, UniformFixedLevel) {
  NoiseOptions noise;
  noise.fixed_t = 0.3;
  expect_rates_match({}, noise);
}

TEST(MaskStatistics, PositionDependentFixedLevel) {
  NoiseOptions noise;
  noise.fixed_t = 0.4;
  expect_rates_match(position_dependent(3.0), noise);
}

TEST(MaskStatistics, UniformSampledLevels) {
  expect_rates_match({}, {});
}

TEST(MaskStatistics, PositionDependentSampledStratifiedLevels) {
  NoiseOptions noise;
  noise.sampling = NoiseSampling::stratified;
  expect_rates_match(position_dependent(2.0), noise);
}

// Noise levels are U[eps, 1]: histogram chi-square over 20 bins (critical value for 19 degrees
// of freedom at p = 0.001 is 43.8), and the mean.
TEST(NoiseLevels, IndependentLevelsAreUniformOnEpsOne) {
  const std::int64_t samples = 4000, block = 4, seq = 16;
  NoiseSampler sampler(5, 3, {}, {}, seq, block, samples);
  std::vector<double> bins(20, 0.0);
  double sum = 0.0, n = 0.0;
  for (std::int64_t s = 0; s < samples; ++s)
    for (std::int64_t b = 0; b < sampler.blocks(); ++b) {
      const double t = sampler.noise_level(s, b);
      ASSERT_GE(t, 1e-3);
      ASSERT_LE(t, 1.0);
      const double u = (t - 1e-3) / (1.0 - 1e-3);
      bins[std::min<std::size_t>(19, static_cast<std::size_t>(u * 20))] += 1.0;
      sum += t;
      n += 1.0;
    }
  double chi2 = 0.0;
  for (double c : bins) chi2 += (c - n / 20) * (c - n / 20) / (n / 20);
  EXPECT_LT(chi2, 43.8);
  EXPECT_NEAR(sum / n, (1.0 + 1e-3) / 2, 5 * std::sqrt(1.0 / 12 / n));
}

// Stratified: the step's levels, sorted, are exactly evenly spaced; a sequence's blocks are
// 1/blocks apart (mod 1); and each sample's levels do not depend on how the batch is split.
TEST(NoiseLevels, StratifiedLevelsCoverTheStepEvenly) {
  const std::int64_t samples = 6, block = 4, seq = 16;
  NoiseOptions noise;
  noise.sampling = NoiseSampling::stratified;
  NoiseSampler sampler(9, 11, noise, {}, seq, block, samples);
  std::vector<double> u;
  for (std::int64_t s = 0; s < samples; ++s)
    for (std::int64_t b = 0; b < sampler.blocks(); ++b)
      u.push_back((sampler.noise_level(s, b) - 1e-3) / (1.0 - 1e-3));
  std::sort(u.begin(), u.end());
  const double units = static_cast<double>(u.size());
  for (std::size_t i = 1; i < u.size(); ++i) EXPECT_NEAR(u[i] - u[i - 1], 1.0 / units, 1e-9);
  auto unit = [&](std::int64_t b) { return (sampler.noise_level(2, b) - 1e-3) / (1.0 - 1e-3); };
  EXPECT_NEAR(std::fmod(unit(1) - unit(0) + 1.0, 1.0), 0.25, 1e-9);
}

TEST(NoiseLevels, DrawsAreKeyedBySeedStepAndGlobalSample) {
  const NoiseSampler a(1, 5, {}, {}, 12, 4, 8), b(1, 5, {}, {}, 12, 4, 8),
      c(1, 6, {}, {}, 12, 4, 8);
  EXPECT_EQ(a.draw(3).masked, b.draw(3).masked);
  EXPECT_EQ(a.draw(3).t, b.draw(3).t);
  EXPECT_NE(a.draw(3).t, c.draw(3).t);
  EXPECT_NE(a.draw(3).t, a.draw(4).t);
  NoiseOptions per_sequence;
  per_sequence.per_sequence = true;
  const NoiseSampler p(1, 5, per_sequence, {}, 12, 4, 8);
  const auto t = p.draw(2).t;
  for (double x : t) EXPECT_EQ(x, t[0]);
}

}  // namespace
}  // namespace metamorph::diffusion
