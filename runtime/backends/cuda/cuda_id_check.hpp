// The check of token ids that come from data files (embedding ids, loss targets): queued on the
// stream beside the kernels that use them and read back once, with the caller's own results
// where it downloads any. Each host wait leaves the GPU idle until the host has queued the next
// kernels.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "runtime/core/tensor.hpp"

namespace metamorph::cuda {

class CudaBackend;

// What *first_bad holds after the check when every id is valid: the value cudaMemsetAsync's byte
// 0x7f gives, above any position.
inline constexpr long long kNoBadId = 0x7f7f7f7f7f7f7f7fLL;

// Queues: *first_bad = the smallest position whose id lies outside [0, limit) and is not
// `exempt` (integer atomics: the result does not depend on the order), else kNoBadId.
void launch_id_check(const Tensor& ids, std::int64_t limit, std::optional<std::int32_t> exempt,
                     long long* first_bad);

// The check with one host wait of its own: `alongside` (work that bad ids cannot make unsafe) is
// queued between the check and its download. Returns the first bad position, or kNoBadId.
long long wait_for_id_check(CudaBackend& backend, const Tensor& ids, std::int64_t limit,
                            std::optional<std::int32_t> exempt,
                            const std::function<void()>& alongside = {});

// The id at a position the check downloaded (for the error message); nothing when none was bad.
std::optional<std::int32_t> bad_id_at(const Tensor& ids, long long first_bad);

}  // namespace metamorph::cuda
