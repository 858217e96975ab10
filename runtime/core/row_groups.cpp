#include "runtime/core/row_groups.hpp"

#include <algorithm>

#include "runtime/core/error.hpp"

namespace metamorph {

std::vector<RowGroup> non_empty_row_groups(const std::vector<std::int64_t>& counts,
                                           std::int64_t rows_a, std::int64_t rows_b,
                                           const char* op) {
  std::vector<RowGroup> groups;
  std::int64_t at = 0;
  for (std::size_t g = 0; g < counts.size(); ++g) {
    MM_ASSERT(counts[g] >= 0, op, ": group ", g, " has ", counts[g], " rows");
    if (counts[g] > 0) groups.push_back({g, at, counts[g]});
    at += counts[g];
  }
  MM_ASSERT(at == rows_a && at == rows_b, op, ": groups cover ", at, " rows of operands of ",
            rows_a, " and ", rows_b);
  return groups;
}

std::optional<std::pair<std::size_t, std::size_t>> overlapping_group_tensors(
    const std::vector<Tensor*>& tensors, const std::vector<RowGroup>& groups) {
  struct Span {
    std::uintptr_t begin, end;
    std::size_t group;
  };
  std::vector<Span> spans;
  spans.reserve(groups.size());
  for (const RowGroup& g : groups) {
    const Tensor& t = *tensors.at(g.index);
    if (t.bytes() == 0) continue;  // nothing to write
    const auto begin = reinterpret_cast<std::uintptr_t>(t.raw());
    spans.push_back({begin, begin + t.bytes(), g.index});
  }
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  // Sorted by start, a span overlaps an earlier one exactly when it starts before the furthest
  // end so far.
  std::size_t furthest = 0;
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[furthest].end)
      return std::make_pair(spans[furthest].group, spans[i].group);
    if (spans[i].end > spans[furthest].end) furthest = i;
  }
  return std::nullopt;
}

}  // namespace metamorph
