#include "runtime/checkpoint/fletcher32.hpp"

#include <algorithm>
#include <cstring>

#include "runtime/core/error.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#define METAMORPH_AVX2_CHECKSUM 1
#endif

// How the additions are reordered. HDF5 reads the bytes as big-endian 16-bit words
// w_0 .. w_{n-1} and keeps sum1 = sum of w_i and sum2 = sum of (n - i) w_i (sum1 += w; sum2 +=
// sum1), folding carries back in (x = (x & 0xffff) + (x >> 16)), so both stay residues modulo
// 65535. A fold never turns a non-zero sum into 0, so HDF5's result is each sum's residue, except
// that a residue of 0 reads 0xffff unless every byte is 0. Any order of additions that keeps the
// residues exact therefore gives HDF5's bits. Here K lanes each take every K-th word: after M
// steps lane l holds S_l = sum_j w_{jK+l} and T_l = sum_j (M - j) w_{jK+l} (T += S after every
// step), so with n = MK words, sum1 = sum_l S_l and sum2 = K sum_l T_l - sum_l l S_l. The lanes
// are SIMD registers: no dependency runs from one word to the next, as it does in HDF5's loop.

namespace metamorph::checkpoint {

namespace {

constexpr std::uint64_t kModulus = 65535;
// Steps between folds of the lanes: a folded lane is below 2^17, and s steps add at most
// s * 2^17 + s (s + 1) / 2 * 65535 to T, which stays below 2^32 for s = 256.
constexpr std::size_t kStepsPerFold = 256;
// Copies at least this large (a core's whole L2 on the development VM) write past the caches.
constexpr std::size_t kStreamBytes = std::size_t{1} << 20;

struct Sums {
  std::uint64_t sum1 = 0;  // residues modulo 65535
  std::uint64_t sum2 = 0;
};

std::uint32_t fold(std::uint32_t x) {
  return (x & 0xffff) + (x >> 16);
}

std::uint32_t word_at(const std::uint8_t* p) {
  return (static_cast<std::uint32_t>(p[0]) << 8) | p[1];
}

// Appends `words` words, summed in `lanes` lanes (s: S_l, t: T_l), to the sums of the bytes
// before them.
void add_lanes(Sums& sums, std::size_t words, const std::uint32_t* s, const std::uint32_t* t,
               std::size_t lanes) {
  std::uint64_t plain = 0, weighted = 0, by_lane = 0;
  for (std::size_t l = 0; l < lanes; ++l) {
    plain += s[l];
    weighted += t[l];
    by_lane += l * s[l];
  }
  // Every one of the new words also adds the earlier sum1 to sum2.
  sums.sum2 = (sums.sum2 + words % kModulus * sums.sum1 + lanes * (weighted % kModulus) + kModulus -
               by_lane % kModulus) %
              kModulus;
  sums.sum1 = (sums.sum1 + plain) % kModulus;
}

// HDF5's order, one word at a time: the few words the lanes leave over.
void add_words(Sums& sums, const std::uint8_t* p, std::size_t words) {
  for (std::size_t i = 0; i < words; ++i) {
    sums.sum1 = (sums.sum1 + word_at(p + 2 * i)) % kModulus;
    sums.sum2 = (sums.sum2 + sums.sum1) % kModulus;
  }
}

bool all_zero(const std::uint8_t* p, std::size_t bytes) {
  return std::all_of(p, p + bytes, [](std::uint8_t b) { return b == 0; });
}

// The lane kernels sum (and copy to dst, when not null) a prefix of the `bytes` at src, a whole
// number of steps, and return its length.

// 16 lanes in plain loops that the compiler vectorises for whatever the target has.
std::size_t portable_lanes(Sums& sums, const std::uint8_t* src, std::uint8_t* dst,
                           std::size_t bytes) {
  constexpr std::size_t kLanes = 16, kStepBytes = 2 * kLanes;
  const std::size_t steps = bytes / kStepBytes;
  std::uint32_t s[kLanes] = {}, t[kLanes] = {};
  for (std::size_t first = 0; first < steps; first += kStepsPerFold) {
    const std::size_t end = std::min(steps, first + kStepsPerFold);
    for (std::size_t j = first; j < end; ++j) {
      const std::uint8_t* step = src + j * kStepBytes;
      if (dst != nullptr) std::memcpy(dst + j * kStepBytes, step, kStepBytes);
      for (std::size_t l = 0; l < kLanes; ++l) {
        s[l] += word_at(step + 2 * l);
        t[l] += s[l];
      }
    }
    for (std::size_t l = 0; l < kLanes; ++l) {
      s[l] = fold(s[l]);
      t[l] = fold(t[l]);
    }
  }
  add_lanes(sums, steps * kLanes, s, t, kLanes);
  return steps * kStepBytes;
}

#ifdef METAMORPH_AVX2_CHECKSUM

enum class Store { none, cached, streamed };

// 8 lanes of 32 bits in one register; each 32-byte load is two steps (its low 8 words, then its
// high 8), byte-swapped to big-endian words and widened to 32 bits.
template <Store kStore>
__attribute__((target("avx2"))) std::size_t avx2_lanes(Sums& sums, const std::uint8_t* src,
                                                       std::uint8_t* dst, std::size_t bytes) {
  constexpr std::size_t kLanes = 8, kLoadBytes = 32, kLoadsPerFold = kStepsPerFold / 2;
  const __m256i swap_bytes = _mm256_setr_epi8(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14,
                                              1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  const __m256i low_half = _mm256_set1_epi32(0xffff);
  __m256i s = _mm256_setzero_si256(), t = _mm256_setzero_si256();
  const std::size_t loads = bytes / kLoadBytes;
  for (std::size_t first = 0; first < loads; first += kLoadsPerFold) {
    const std::size_t end = std::min(loads, first + kLoadsPerFold);
    for (std::size_t i = first; i < end; ++i) {
      const __m256i raw =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * kLoadBytes));
      if constexpr (kStore == Store::cached)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i * kLoadBytes), raw);
      if constexpr (kStore == Store::streamed)
        _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i * kLoadBytes), raw);
      const __m256i words = _mm256_shuffle_epi8(raw, swap_bytes);
      s = _mm256_add_epi32(s, _mm256_cvtepu16_epi32(_mm256_castsi256_si128(words)));
      t = _mm256_add_epi32(t, s);
      s = _mm256_add_epi32(s, _mm256_cvtepu16_epi32(_mm256_extracti128_si256(words, 1)));
      t = _mm256_add_epi32(t, s);
    }
    s = _mm256_add_epi32(_mm256_and_si256(s, low_half), _mm256_srli_epi32(s, 16));
    t = _mm256_add_epi32(_mm256_and_si256(t, low_half), _mm256_srli_epi32(t, 16));
  }
  if constexpr (kStore == Store::streamed) _mm_sfence();  // streamed stores visible to all
  alignas(32) std::uint32_t s_lanes[kLanes], t_lanes[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(s_lanes), s);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t_lanes), t);
  add_lanes(sums, loads * 2 * kLanes, s_lanes, t_lanes, kLanes);
  return loads * kLoadBytes;
}

std::size_t avx2_lanes(Sums& sums, const std::uint8_t* src, std::uint8_t* dst, std::size_t bytes) {
  if (dst == nullptr) return avx2_lanes<Store::none>(sums, src, dst, bytes);
  if (bytes >= kStreamBytes && reinterpret_cast<std::uintptr_t>(dst) % 32 == 0)
    return avx2_lanes<Store::streamed>(sums, src, dst, bytes);
  return avx2_lanes<Store::cached>(sums, src, dst, bytes);
}

#endif

}  // namespace

bool checksum_kernel_available(ChecksumKernel kernel) {
  if (kernel != ChecksumKernel::avx2) return true;
#ifdef METAMORPH_AVX2_CHECKSUM
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

Fletcher32::Fletcher32(ChecksumKernel kernel) : kernel_(kernel) {
  MM_ASSERT(checksum_kernel_available(kernel), "checksum kernel ", static_cast<int>(kernel),
            " is not available on this CPU");
  if (kernel_ == ChecksumKernel::fastest)
    kernel_ = checksum_kernel_available(ChecksumKernel::avx2) ? ChecksumKernel::avx2
                                                              : ChecksumKernel::portable;
}

void Fletcher32::add(const void* data, std::size_t bytes) {
  add_piece(static_cast<const std::uint8_t*>(data), nullptr, bytes);
}

void Fletcher32::add_copy(const void* src, void* dst, std::size_t bytes) {
  add_piece(static_cast<const std::uint8_t*>(src), static_cast<std::uint8_t*>(dst), bytes);
}

void Fletcher32::add_piece(const std::uint8_t* src, std::uint8_t* dst, std::size_t bytes) {
  MM_ASSERT(!odd_, "a piece of odd length must be the last of a Fletcher32");
  if (bytes == 0) return;
  Sums sums{sum1_, sum2_};
  const std::size_t even = bytes - bytes % 2;
  std::size_t done = 0;
#ifdef METAMORPH_AVX2_CHECKSUM
  if (kernel_ == ChecksumKernel::avx2) done = avx2_lanes(sums, src, dst, even);
#endif
  if (kernel_ == ChecksumKernel::portable) done = portable_lanes(sums, src, dst, even);
  // The rest is summed where it lands, so that a copy's sum is the sum of what it wrote.
  const std::uint8_t* summed = src;
  if (dst != nullptr) {
    std::memcpy(dst + done, src + done, bytes - done);
    summed = dst;
  }
  add_words(sums, summed + done, (even - done) / 2);
  if (bytes % 2 != 0) {  // HDF5 adds an odd last byte as the high half of a word
    sums.sum1 = (sums.sum1 + (static_cast<std::uint64_t>(summed[bytes - 1]) << 8)) % kModulus;
    sums.sum2 = (sums.sum2 + sums.sum1) % kModulus;
    odd_ = true;
  }
  // A piece that moved sum1 has a non-zero byte; one that did not is looked at (rare but for
  // all-zero data).
  if (!nonzero_) nonzero_ = sums.sum1 != sum1_ || !all_zero(summed, bytes);
  sum1_ = sums.sum1;
  sum2_ = sums.sum2;
}

std::uint32_t Fletcher32::value() const {
  const std::uint64_t sum1 = sum1_ == 0 && nonzero_ ? kModulus : sum1_;
  const std::uint64_t sum2 = sum2_ == 0 && nonzero_ ? kModulus : sum2_;
  return static_cast<std::uint32_t>((sum2 << 16) | sum1);
}

std::uint32_t fletcher32(const void* data, std::size_t bytes, ChecksumKernel kernel) {
  Fletcher32 sum(kernel);
  sum.add(data, bytes);
  return sum.value();
}

std::uint32_t fletcher32_copy(const void* src, void* dst, std::size_t bytes,
                              ChecksumKernel kernel) {
  Fletcher32 sum(kernel);
  sum.add_copy(src, dst, bytes);
  return sum.value();
}

}  // namespace metamorph::checkpoint
