#pragma once
// The row groups of the grouped GEMMs (Backend::grouped_matmul): consecutive blocks of counts[g]
// rows, one per expert. Shared by the default loop and the CUDA backend's concurrent one.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "runtime/core/tensor.hpp"

namespace metamorph {

struct RowGroup {
  std::size_t index;   // in counts
  std::int64_t first;  // its first row
  std::int64_t count;  // > 0
};

// The non-empty groups of `counts`, each with its first row, in group order. The groups must cover
// exactly the rows of both row-grouped operands (rows_a, rows_b) and no count may be negative; a
// caller's bug otherwise (std::logic_error naming `op`).
std::vector<RowGroup> non_empty_row_groups(const std::vector<std::int64_t>& counts,
                                           std::int64_t rows_a, std::int64_t rows_b,
                                           const char* op);

// Two of the groups whose tensors (tensors[group.index]) share memory, lower address first; none
// when every group's tensor has memory of its own. (Groups that run at the same time must not
// accumulate into the same memory.)
std::optional<std::pair<std::size_t, std::size_t>> overlapping_group_tensors(
    const std::vector<Tensor*>& tensors, const std::vector<RowGroup>& groups);

}  // namespace metamorph
