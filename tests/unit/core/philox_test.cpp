#include <gtest/gtest.h>

#include <cmath>

#include "runtime/rng/philox.hpp"

namespace metamorph::rng {
namespace {

// Known-answer vectors of Random123 (kat_vectors, philox4x32 with 10 rounds).
TEST(Philox, MatchesRandom123KnownAnswers) {
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (Counter{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  EXPECT_EQ(philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                          {0xffffffffu, 0xffffffffu}),
            (Counter{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  EXPECT_EQ(philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                          {0xa4093822u, 0x299f31d0u}),
            (Counter{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(Philox, StreamsAreKeyedByPurposeAndStep) {
  const Stream a(42, "layers.0.mlp.up.weight");
  const Stream b(42, "layers.0.mlp.down.weight");
  const Stream a_again(42, "layers.0.mlp.up.weight");
  const Stream a_step(42, "layers.0.mlp.up.weight", 1);
  EXPECT_EQ(a.bits(7), a_again.bits(7));
  EXPECT_NE(a.bits(7), b.bits(7));
  EXPECT_NE(a.bits(7), a_step.bits(7));
  EXPECT_NE(Stream(43, "layers.0.mlp.up.weight").bits(7), a.bits(7));
}

TEST(Philox, UniformAndNormalHaveTheRightMoments) {
  const Stream s(1234, "moments");
  const int n = 200000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = s.uniform(static_cast<std::uint64_t>(i));
    ASSERT_GT(u, 0.0);
    ASSERT_LT(u, 1.0);
    su += u;
    su2 += u * u;
    const double z = s.normal(static_cast<std::uint64_t>(i));
    sn += z;
    sn2 += z * z;
  }
  EXPECT_NEAR(su / n, 0.5, 0.005);
  EXPECT_NEAR(su2 / n - (su / n) * (su / n), 1.0 / 12.0, 0.002);
  EXPECT_NEAR(sn / n, 0.0, 0.01);
  EXPECT_NEAR(sn2 / n, 1.0, 0.01);
}

}  // namespace
}  // namespace metamorph::rng
