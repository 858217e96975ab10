#pragma once
// How likely each position of a block is to be replaced by [MASK] at noise level t.
//
// uniform:             p_i(t) = t for every position.
// position-dependent:  (Efficient-DLM) later positions of a block are masked more often, with the
//                      block's mean rate still t. For a block of nominal size B whose first L
//                      positions are present (L < B only for a sequence's last, partial block):
//                        w_i(t) = exp(beta * (1 - t) * i / B),           i = 0 .. L-1
//                        p_i(t) = t * L * w_i / sum_j w_j,  then clipped to [0, 1]
//                      Clipping alone would lower the mean below t, so the mass cut off at 1 is
//                      handed to the unclipped positions in proportion to their w_i until none
//                      exceeds 1 (water-filling); the mean is then exactly t. At t = 1 every
//                      w_i is 1 and the schedule is uniform.
#include <cstdint>
#include <string>
#include <vector>

namespace metamorph::diffusion {

enum class MaskSchedule { uniform, position_dependent };

// "uniform" or "position-dependent"; throws InputError naming both.
MaskSchedule parse_mask_schedule(const std::string& name);
std::string mask_schedule_name(MaskSchedule schedule);

struct MaskingOptions {
  MaskSchedule schedule = MaskSchedule::uniform;
  double beta = 2.0;  // position-dependent slope; 0 makes it uniform
};

// Throws InputError for a beta that is negative or not finite.
void validate(const MaskingOptions& options);

// p_i(t) for i in [0, length) of a block of nominal size block_size (length <= block_size).
std::vector<double> block_mask_rates(const MaskingOptions& options, double t, std::int64_t length,
                                     std::int64_t block_size);

}  // namespace metamorph::diffusion
