#include "runtime/transforms/unit_map.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

bool UnitMap::uniform() const {
  for (const std::int64_t c : copies)
    if (c != copies.front()) return false;
  return true;
}

UnitMap unit_map_from_sources(std::int64_t old_size, std::vector<std::int64_t> source) {
  UnitMap map;
  map.old_size = old_size;
  std::vector<std::int64_t> count(static_cast<std::size_t>(old_size), 0);
  map.fresh.reserve(source.size());
  for (const std::int64_t s : source) {
    MM_ASSERT(s >= 0 && s < old_size, "unit source ", s, " outside [0, ", old_size, ")");
    map.fresh.push_back(count[static_cast<std::size_t>(s)]++ > 0);
  }
  for (std::int64_t u = 0; u < old_size; ++u)
    MM_ASSERT(count[static_cast<std::size_t>(u)] > 0, "old unit ", u, " is never copied");
  map.copies.reserve(source.size());
  for (const std::int64_t s : source) map.copies.push_back(count[static_cast<std::size_t>(s)]);
  map.source = std::move(source);
  return map;
}

UnitMap circular_map(std::int64_t old_size, std::int64_t new_size) {
  MM_ASSERT(old_size > 0 && new_size >= old_size);
  std::vector<std::int64_t> source(static_cast<std::size_t>(new_size));
  for (std::int64_t j = 0; j < new_size; ++j) source[static_cast<std::size_t>(j)] = j % old_size;
  return unit_map_from_sources(old_size, std::move(source));
}

UnitMap grouped_query_map(std::int64_t old_heads, std::int64_t old_kv_heads, std::int64_t new_heads,
                          std::int64_t new_kv_heads) {
  const std::int64_t old_group = old_heads / old_kv_heads, new_group = new_heads / new_kv_heads;
  MM_ASSERT(new_kv_heads >= old_kv_heads && new_group >= old_group);
  std::vector<std::int64_t> source(static_cast<std::size_t>(new_heads));
  for (std::int64_t j = 0; j < new_heads; ++j) {
    const std::int64_t group = j / new_group, member = j % new_group;
    source[static_cast<std::size_t>(j)] = (group % old_kv_heads) * old_group + member % old_group;
  }
  return unit_map_from_sources(old_heads, std::move(source));
}

}  // namespace metamorph
