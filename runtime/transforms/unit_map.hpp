#pragma once
// Where each unit of a grown axis (a hidden dimension, an FFN neuron, an attention head) comes
// from in the smaller model.
#include <cstdint>
#include <vector>

namespace metamorph {

struct UnitMap {
  std::int64_t old_size = 0;
  std::vector<std::int64_t> source;  // old unit of each new unit
  std::vector<std::int64_t> copies;  // how many new units share this new unit's source
  std::vector<bool> fresh;           // true unless this is the first copy of its source

  std::int64_t size() const { return static_cast<std::int64_t>(source.size()); }
  // True when every old unit is copied the same number of times.
  bool uniform() const;
};

// A map from explicit sources; every old unit must appear at least once.
UnitMap unit_map_from_sources(std::int64_t old_size, std::vector<std::int64_t> source);

// New unit j copies old unit j mod old_size (AquilaMoE's circular copy): with an integer
// factor every old unit is copied equally often.
UnitMap circular_map(std::int64_t old_size, std::int64_t new_size);

// Query heads that stay inside their KV group. New KV head t copies old KV head t mod kv; query
// head r of new group t copies query head r mod G of that old group (G = heads / kv_heads of
// the source). When the group size is unchanged this is the circular map over query heads.
UnitMap grouped_query_map(std::int64_t old_heads, std::int64_t old_kv_heads, std::int64_t new_heads,
                          std::int64_t new_kv_heads);

}  // namespace metamorph
