#pragma once
// Noise levels and [MASK] positions for one optimizer step. Every draw is a pure function of
// (seed, step, global sample index, block or position): a rank that holds global samples
// [first, first + rows) draws exactly what a single rank draws for them, under any DP layout.
//
// A noise level t is drawn per block (or per sequence) from U[eps, 1]:
//   independent: u = Philox(seed, "diffusion.noise", step)[unit]
//   stratified:  u = frac(u0 + j / U) with one u0 = Philox(seed, "diffusion.noise.offset",
//                step)[0] per step, U the step's number of units over the *global* batch and
//                j = block * global_batch + sample, so the blocks of one sequence are spread
//                1/blocks apart and every step covers [0, 1) evenly (low-discrepancy sampling
//                as in MDLM); it depends on the global batch size, never on the layout.
//   t = eps + (1 - eps) * u.
// Position i is masked when Philox(seed, "diffusion.mask", step)[sample * seq + i] < p_i(t).
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/diffusion/mask_schedule.hpp"

namespace metamorph::diffusion {

enum class NoiseSampling { independent, stratified };

// "independent" or "stratified"; throws InputError naming both.
NoiseSampling parse_noise_sampling(const std::string& name);

struct NoiseOptions {
  double eps = 1e-3;
  bool per_sequence = false;  // one t for every block of a sequence
  NoiseSampling sampling = NoiseSampling::independent;
  double fixed_t = 0.0;  // > 0: every block uses this level (tests, evaluation at one level)
};

void validate(const NoiseOptions& options);

// One sequence's draw: the noise level of each position's block and whether it is masked.
struct SequenceNoise {
  std::vector<double> t;     // [seq]
  std::vector<bool> masked;  // [seq]
};

class NoiseSampler {
 public:
  NoiseSampler(std::uint64_t seed, std::int64_t step, NoiseOptions noise, MaskingOptions masking,
               std::int64_t seq, std::int64_t block_size, std::int64_t global_batch);

  std::int64_t blocks() const { return (seq_ + block_size_ - 1) / block_size_; }
  // Noise level of block `block` of global sample `sample`.
  double noise_level(std::int64_t sample, std::int64_t block) const;
  SequenceNoise draw(std::int64_t sample) const;

 private:
  std::uint64_t seed_;
  std::int64_t step_;
  NoiseOptions noise_;
  MaskingOptions masking_;
  std::int64_t seq_, block_size_, global_batch_;
  double offset_ = 0.0;  // stratified u0
};

}  // namespace metamorph::diffusion
