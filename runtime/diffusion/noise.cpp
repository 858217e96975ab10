#include "runtime/diffusion/noise.hpp"

#include <cmath>

#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"

namespace metamorph::diffusion {

NoiseSampling parse_noise_sampling(const std::string& name) {
  if (name == "independent") return NoiseSampling::independent;
  if (name == "stratified") return NoiseSampling::stratified;
  throw InputError(
      concat("--noise-sampling '", name, "' is not known; use independent or stratified"));
}

void validate(const NoiseOptions& options) {
  require(options.eps > 0.0 && options.eps < 1.0, "noise eps ", options.eps, " must be in (0, 1)");
  require(options.fixed_t == 0.0 || (options.fixed_t > 0.0 && options.fixed_t <= 1.0),
          "fixed noise level ", options.fixed_t, " must be in (0, 1] (or 0 to sample it)");
}

NoiseSampler::NoiseSampler(std::uint64_t seed, std::int64_t step, NoiseOptions noise,
                           MaskingOptions masking, std::int64_t seq, std::int64_t block_size,
                           std::int64_t global_batch)
    : seed_(seed),
      step_(step),
      noise_(noise),
      masking_(masking),
      seq_(seq),
      block_size_(block_size),
      global_batch_(global_batch) {
  validate(noise_);
  validate(masking_);
  require(block_size >= 1 && block_size <= 64, "--block-size ", block_size,
          " must be between 1 and 64");
  require(seq >= 1, "diffusion sequence length ", seq, " must be positive");
  MM_ASSERT(global_batch >= 1, "global batch ", global_batch);
  if (noise_.sampling == NoiseSampling::stratified)
    offset_ =
        rng::Stream(seed_, "diffusion.noise.offset", static_cast<std::uint64_t>(step_)).uniform(0);
}

double NoiseSampler::noise_level(std::int64_t sample, std::int64_t block) const {
  MM_ASSERT(sample >= 0 && sample < global_batch_ && block >= 0 && block < blocks(), "sample ",
            sample, " block ", block);
  if (noise_.fixed_t > 0.0) return noise_.fixed_t;
  const std::int64_t b = noise_.per_sequence ? 0 : block;
  const std::int64_t per_sample = noise_.per_sequence ? 1 : blocks();
  double u = 0.0;
  if (noise_.sampling == NoiseSampling::independent) {
    const rng::Stream stream(seed_, "diffusion.noise", static_cast<std::uint64_t>(step_));
    u = stream.uniform(static_cast<std::uint64_t>(sample * per_sample + b));
  } else {
    const auto units = static_cast<double>(global_batch_ * per_sample);
    const auto j = static_cast<double>(b * global_batch_ + sample);
    u = offset_ + j / units;
    u -= std::floor(u);
  }
  return noise_.eps + (1.0 - noise_.eps) * u;
}

SequenceNoise NoiseSampler::draw(std::int64_t sample) const {
  SequenceNoise out;
  out.t.resize(static_cast<std::size_t>(seq_));
  out.masked.resize(static_cast<std::size_t>(seq_));
  const rng::Stream stream(seed_, "diffusion.mask", static_cast<std::uint64_t>(step_));
  for (std::int64_t b = 0; b < blocks(); ++b) {
    const std::int64_t begin = b * block_size_, length = std::min(block_size_, seq_ - begin);
    const double t = noise_level(sample, b);
    const std::vector<double> rates = block_mask_rates(masking_, t, length, block_size_);
    for (std::int64_t i = 0; i < length; ++i) {
      const auto at = static_cast<std::size_t>(begin + i);
      out.t[at] = t;
      const double u = stream.uniform(static_cast<std::uint64_t>(sample * seq_ + begin + i));
      out.masked[at] = u < rates[static_cast<std::size_t>(i)];
    }
  }
  return out;
}

}  // namespace metamorph::diffusion
