#pragma once
// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011). A value is a pure function of
// (seed, purpose, step, index), so parameter init and masks are identical under any parallel
// layout: a rank draws exactly the global indices it owns.
#include <array>
#include <cstdint>
#include <string_view>

namespace metamorph::rng {

using Counter = std::array<std::uint32_t, 4>;
using Key = std::array<std::uint32_t, 2>;

Counter philox4x32_10(Counter counter, Key key);

// 64-bit key derived from the run's seed and a purpose string ("layers.3.mlp.up.weight",
// "diffusion.mask"); distinct purposes give independent streams.
Key derive_key(std::uint64_t seed, std::string_view purpose);

class Stream {
 public:
  Stream(std::uint64_t seed, std::string_view purpose, std::uint64_t step = 0)
      : key_(derive_key(seed, purpose)), step_(step) {}

  // Four independent 32-bit words for element `index`.
  Counter bits(std::uint64_t index) const;
  // Uniform in the open interval (0, 1).
  float uniform(std::uint64_t index) const;
  // Standard normal (Box-Muller on the first two words).
  float normal(std::uint64_t index) const;

 private:
  Key key_;
  std::uint64_t step_;
};

}  // namespace metamorph::rng
