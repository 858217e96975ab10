#include "runtime/data/keyed_permutation.hpp"

#include <algorithm>
#include <bit>

#include "runtime/core/error.hpp"

namespace metamorph::data {

namespace {
// Luby-Rackoff: four rounds already give a pseudorandom permutation; six add margin.
constexpr int kRounds = 6;
}  // namespace

KeyedPermutation::KeyedPermutation(std::uint64_t size, std::uint64_t seed, std::string_view purpose,
                                   std::uint64_t round)
    : size_(size), stream_(seed, purpose, round) {
  const int bits = size <= 1 ? 0 : std::bit_width(size - 1);
  half_bits_ = std::max(1, (bits + 1) / 2);
  half_mask_ = (std::uint64_t{1} << half_bits_) - 1;
}

std::uint64_t KeyedPermutation::feistel(std::uint64_t value) const {
  std::uint64_t left = value >> half_bits_, right = value & half_mask_;
  for (std::uint64_t r = 0; r < kRounds; ++r) {
    const std::uint64_t mixed = stream_.bits((r << 32) | right)[0] & half_mask_;
    const std::uint64_t next_right = left ^ mixed;
    left = right;
    right = next_right;
  }
  return (left << half_bits_) | right;
}

std::uint64_t KeyedPermutation::operator()(std::uint64_t index) const {
  MM_ASSERT(index < size_, "index ", index, " outside the permutation of ", size_);
  // The domain is at most four times size_, so the walk takes four steps on average.
  std::uint64_t value = feistel(index);
  while (value >= size_) value = feistel(value);
  return value;
}

}  // namespace metamorph::data
