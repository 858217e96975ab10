#pragma once
// A random permutation of [0, size) that is a pure function of (seed, purpose, round), evaluated
// index by index in O(1) memory: a Feistel network keyed by Philox over the smallest even power
// of two that covers `size`, cycle-walking back into range. The data order uses it so that
// sample g of a run is the same whatever the number of ranks that read it.
#include <cstdint>
#include <string_view>

#include "runtime/rng/philox.hpp"

namespace metamorph::data {

class KeyedPermutation {
 public:
  KeyedPermutation(std::uint64_t size, std::uint64_t seed, std::string_view purpose,
                   std::uint64_t round);

  std::uint64_t size() const { return size_; }
  // The image of `index`, which must be below size().
  std::uint64_t operator()(std::uint64_t index) const;

 private:
  std::uint64_t feistel(std::uint64_t value) const;
  std::uint64_t size_;
  int half_bits_;
  std::uint64_t half_mask_;
  rng::Stream stream_;
};

}  // namespace metamorph::data
