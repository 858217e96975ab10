// The check of token ids that come from data files (embedding ids, loss targets): queued on the
// stream beside the kernels that use them, read back with the caller's own results, so that a
// check costs no host wait of its own. Each host wait leaves the GPU idle until the host has
// queued the next kernels.
#pragma once

#include <cstdint>
#include <optional>

#include "runtime/core/tensor.hpp"

namespace metamorph::cuda {

// What *first_bad holds after the check when every id is valid: the value cudaMemsetAsync's byte
// 0x7f gives, above any position.
inline constexpr long long kNoBadId = 0x7f7f7f7f7f7f7f7fLL;

// Queues: *first_bad = the smallest position whose id lies outside [0, limit) and is not
// `exempt` (integer atomics: the result does not depend on the order), else kNoBadId.
void launch_id_check(const Tensor& ids, std::int64_t limit, std::optional<std::int32_t> exempt,
                     long long* first_bad);

// The id at a position the check downloaded (for the error message); nothing when none was bad.
std::optional<std::int32_t> bad_id_at(const Tensor& ids, long long first_bad);

}  // namespace metamorph::cuda
