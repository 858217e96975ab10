#include "runtime/diffusion/mask_schedule.hpp"

#include <cmath>

#include "runtime/core/error.hpp"

namespace metamorph::diffusion {

MaskSchedule parse_mask_schedule(const std::string& name) {
  if (name == "uniform") return MaskSchedule::uniform;
  if (name == "position-dependent") return MaskSchedule::position_dependent;
  throw InputError(
      concat("--mask-schedule '", name, "' is not known; use uniform or position-dependent"));
}

std::string mask_schedule_name(MaskSchedule schedule) {
  return schedule == MaskSchedule::uniform ? "uniform" : "position-dependent";
}

void validate(const MaskingOptions& options) {
  require(std::isfinite(options.beta) && options.beta >= 0.0, "--mask-beta ", options.beta,
          " must be a finite number >= 0");
}

std::vector<double> block_mask_rates(const MaskingOptions& options, double t, std::int64_t length,
                                     std::int64_t block_size) {
  MM_ASSERT(length >= 1 && length <= block_size, "block length ", length, " of block size ",
            block_size);
  MM_ASSERT(t >= 0.0 && t <= 1.0, "noise level ", t);
  const auto n = static_cast<std::size_t>(length);
  std::vector<double> rates(n, t);
  if (options.schedule == MaskSchedule::uniform) return rates;

  std::vector<double> w(n);
  for (std::size_t i = 0; i < n; ++i)
    w[i] = std::exp(options.beta * (1.0 - t) * static_cast<double>(i) /
                    static_cast<double>(block_size));
  // Water-filling: positions that would exceed 1 are fixed at 1 and the rest share what is left
  // of the block's mass t * L in proportion to w. Each pass fixes at least one position.
  std::vector<bool> full(n, false);
  double mass = t * static_cast<double>(length);
  for (std::size_t pass = 0; pass <= n; ++pass) {
    double free_weight = 0.0;
    for (std::size_t i = 0; i < n; ++i)
      if (!full[i]) free_weight += w[i];
    if (free_weight <= 0.0) break;
    bool clipped = false;
    for (std::size_t i = 0; i < n; ++i) {
      if (full[i]) continue;
      rates[i] = mass * w[i] / free_weight;
      if (rates[i] > 1.0) {
        full[i] = true;
        clipped = true;
      }
    }
    if (!clipped) break;
    mass = t * static_cast<double>(length);
    for (std::size_t i = 0; i < n; ++i)
      if (full[i]) {
        rates[i] = 1.0;
        mass -= 1.0;
      }
  }
  for (double& r : rates) r = std::min(1.0, std::max(0.0, r));
  return rates;
}

}  // namespace metamorph::diffusion
