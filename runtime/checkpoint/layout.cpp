#include "runtime/checkpoint/layout.hpp"

#include <cstdio>
#include <map>

#include "runtime/core/error.hpp"

namespace metamorph::checkpoint {

std::string kind_name(TensorKind kind) {
  switch (kind) {
    case TensorKind::model:
      return "model";
    case TensorKind::master:
      return "master";
    case TensorKind::adam_m:
      return "m";
    case TensorKind::adam_v:
      return "v";
  }
  return "?";
}

TensorKind parse_kind(const std::string& name) {
  for (auto k : {TensorKind::model, TensorKind::master, TensorKind::adam_m, TensorKind::adam_v})
    if (kind_name(k) == name) return k;
  throw InputError(concat("unknown tensor kind '", name, "'; valid: model, master, m, v"));
}

std::string step_dir_name(std::int64_t step) {
  require(step >= 0, "checkpoint step must be non-negative, got ", step);
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "step_%08lld", static_cast<long long>(step));
  return buffer;
}

std::optional<std::int64_t> parse_step_dir_name(const std::string& name) {
  if (name.rfind("step_", 0) != 0 || name.size() < 13) return std::nullopt;
  std::int64_t step = 0;
  for (std::size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || step > (std::int64_t{1} << 58)) return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  if (step_dir_name(step) != name) return std::nullopt;
  return step;
}

std::string rank_file_name(int rank) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "rank_%05d.h5", rank);
  return buffer;
}

std::string dataset_path(const std::string& tensor, TensorKind kind) {
  require(
      !tensor.empty() && tensor.find('/') == std::string::npos && tensor != "." && tensor != "..",
      "tensor name '", tensor, "' cannot be stored: names must be non-empty, without '/'");
  if (kind == TensorKind::model) return "/model/" + tensor;
  return "/optim/" + tensor + "/" + kind_name(kind);
}

nlohmann::json to_json(const ShardRecord& s) {
  return {{"name", s.name},
          {"kind", kind_name(s.kind)},
          {"dtype", stored_dtype_name(s.dtype)},
          {"global_shape", s.global_shape},
          {"offset", s.offset},
          {"shape", s.shape}};
}

namespace {

Shape shape_field(const nlohmann::json& json, const char* field) {
  require(json.contains(field) && json[field].is_array(), "shard table entry lacks '", field, "'");
  Shape shape;
  for (const auto& v : json[field]) {
    require(v.is_number_integer() && v.get<std::int64_t>() >= 0, "shard table: '", field,
            "' must hold non-negative integers, got ", json[field].dump());
    shape.push_back(v.get<std::int64_t>());
  }
  return shape;
}

std::string string_field(const nlohmann::json& json, const char* field) {
  require(json.contains(field) && json[field].is_string(), "table entry lacks string '", field,
          "'");
  return json[field].get<std::string>();
}

}  // namespace

ShardRecord shard_from_json(const nlohmann::json& json) {
  require(json.is_object(), "shard table entry is not an object");
  ShardRecord s;
  s.name = string_field(json, "name");
  s.kind = parse_kind(string_field(json, "kind"));
  s.dtype = parse_stored_dtype(string_field(json, "dtype"));
  s.global_shape = shape_field(json, "global_shape");
  s.offset = shape_field(json, "offset");
  s.shape = shape_field(json, "shape");
  return s;
}

nlohmann::json to_json(const TensorRecord& t) {
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& b : t.blocks)
    blocks.push_back({{"rank", b.rank}, {"offset", b.offset}, {"shape", b.shape}});
  return {{"name", t.name},
          {"kind", kind_name(t.kind)},
          {"dtype", stored_dtype_name(t.dtype)},
          {"shape", t.shape},
          {"blocks", blocks}};
}

TensorRecord tensor_from_json(const nlohmann::json& json) {
  require(json.is_object(), "tensor table entry is not an object");
  TensorRecord t;
  t.name = string_field(json, "name");
  t.kind = parse_kind(string_field(json, "kind"));
  t.dtype = parse_stored_dtype(string_field(json, "dtype"));
  t.shape = shape_field(json, "shape");
  require(json.contains("blocks") && json["blocks"].is_array(), "tensor ", t.name,
          ": table entry lacks 'blocks'");
  for (const auto& b : json["blocks"]) {
    require(b.is_object() && b.contains("rank") && b["rank"].is_number_integer(), "tensor ", t.name,
            ": a block lacks its rank");
    TensorRecord::Block block{b["rank"].get<int>(), shape_field(b, "offset"),
                              shape_field(b, "shape")};
    require(block.rank >= 0 && block.offset.size() == t.shape.size() &&
                block.shape.size() == t.shape.size(),
            "tensor ", t.name, ": a block's rank or dimensions are invalid");
    t.blocks.push_back(std::move(block));
  }
  return t;
}

namespace {

bool overlaps(const TensorRecord::Block& a, const TensorRecord::Block& b) {
  for (std::size_t d = 0; d < a.offset.size(); ++d) {
    if (a.offset[d] + a.shape[d] <= b.offset[d] || b.offset[d] + b.shape[d] <= a.offset[d])
      return false;
  }
  return true;
}

std::string describe(const TensorRecord& t) {
  return t.name + " (" + kind_name(t.kind) + ")";
}

}  // namespace

std::vector<TensorRecord> merge_shards(const std::vector<std::vector<ShardRecord>>& per_rank) {
  std::vector<TensorRecord> tensors;
  std::map<std::pair<std::string, TensorKind>, std::size_t> position;
  for (std::size_t rank = 0; rank < per_rank.size(); ++rank) {
    for (const auto& s : per_rank[rank]) {
      const auto key = std::make_pair(s.name, s.kind);
      auto it = position.find(key);
      if (it == position.end()) {
        it = position.emplace(key, tensors.size()).first;
        tensors.push_back({s.name, s.kind, s.dtype, s.global_shape, {}});
      }
      TensorRecord& t = tensors[it->second];
      require(t.shape == s.global_shape && t.dtype == s.dtype, "tensor ", describe(t), ": rank ",
              rank, " says global shape ", shape_string(s.global_shape), " ",
              stored_dtype_name(s.dtype), ", an earlier rank said ", shape_string(t.shape), " ",
              stored_dtype_name(t.dtype));
      require(s.offset.size() == t.shape.size() && s.shape.size() == t.shape.size(), "tensor ",
              describe(t), ": rank ", rank, " has a shard of rank ", s.shape.size(),
              " in a tensor of rank ", t.shape.size());
      for (std::size_t d = 0; d < t.shape.size(); ++d)
        require(s.offset[d] + s.shape[d] <= t.shape[d], "tensor ", describe(t), ": rank ", rank,
                "'s shard ", shape_string(s.shape), " at ", shape_string(s.offset),
                " lies outside the global shape ", shape_string(t.shape));
      TensorRecord::Block block{static_cast<int>(rank), s.offset, s.shape};
      bool duplicate = false;
      for (const auto& other : t.blocks) {
        if (other.offset == block.offset && other.shape == block.shape) {
          duplicate = true;  // a replica (data parallel): the lowest rank's copy is the one kept
          break;
        }
        require(shape_numel(block.shape) == 0 || shape_numel(other.shape) == 0 ||
                    !overlaps(other, block),
                "tensor ", describe(t), ": the shard of rank ", rank, " at ",
                shape_string(block.offset), " overlaps the shard of rank ", other.rank, " at ",
                shape_string(other.offset));
      }
      if (!duplicate && shape_numel(block.shape) > 0) t.blocks.push_back(std::move(block));
    }
  }
  for (const auto& t : tensors) {
    std::int64_t covered = 0;
    for (const auto& b : t.blocks) covered += shape_numel(b.shape);
    require(covered == shape_numel(t.shape), "tensor ", describe(t), ": the ranks' shards cover ",
            covered, " of its ", shape_numel(t.shape), " elements");
  }
  return tensors;
}

}  // namespace metamorph::checkpoint
