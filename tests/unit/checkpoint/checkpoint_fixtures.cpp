#include "tests/unit/checkpoint/checkpoint_fixtures.hpp"

#include <cmath>
#include <cstring>
#include <exception>

#include "runtime/checkpoint/stored_dtype.hpp"

namespace metamorph::test {

ModelConfig tiny_config(bool tied) {
  return model_config_from_json(tiny_config_json(tied));
}

nlohmann::json tiny_config_json(bool tied) {
  return {{"model_type", "llama"},    {"vocab_size", 40},           {"hidden_size", 16},
          {"intermediate_size", 24},  {"num_hidden_layers", 2},     {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"tie_word_embeddings", tied}};
}

float expected_value(const std::string& name, Fill fill, std::int64_t index) {
  std::uint32_t h = 2166136261u;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  const double x =
      (h % 1000) * 0.013 + static_cast<double>(index) * 0.731 + static_cast<int>(fill) * 1.7;
  return static_cast<float>(std::sin(x) * (1.0 + static_cast<int>(fill)));
}

namespace {

struct Block {
  Shape offset, shape;
};

Block split(const Shape& global, int dim, int world, int rank) {
  Block b{Shape(global.size(), 0), global};
  if (dim < 0) return b;
  const auto d = static_cast<std::size_t>(std::min<int>(dim, static_cast<int>(global.size()) - 1));
  const std::int64_t begin = global[d] * rank / world, end = global[d] * (rank + 1) / world;
  b.offset[d] = begin;
  b.shape[d] = end - begin;
  return b;
}

// Calls fn(local_flat, global_flat) for every element of a block.
void for_each_element(const Shape& global, const Block& block,
                      const std::function<void(std::int64_t, std::int64_t)>& fn) {
  const std::int64_t n = shape_numel(block.shape);
  std::vector<std::int64_t> index(block.shape.size(), 0);
  for (std::int64_t local = 0; local < n; ++local) {
    std::int64_t g = 0;
    for (std::size_t d = 0; d < global.size(); ++d) g = g * global[d] + block.offset[d] + index[d];
    fn(local, g);
    for (std::size_t d = block.shape.size(); d-- > 0;) {
      if (++index[d] < block.shape[d]) break;
      index[d] = 0;
    }
  }
}

void fill_tensor(Tensor& t, const std::string& name, Fill fill, const Shape& global,
                 const Block& block) {
  for_each_element(global, block, [&](std::int64_t local, std::int64_t g) {
    const float v = expected_value(name, fill, g);
    if (t.dtype() == DType::bf16)
      t.data<std::uint16_t>()[local] = checkpoint::float_to_bf16(v);
    else
      t.data<float>()[local] = v;
  });
}

std::int64_t mismatches(const Tensor& t, const std::string& name, Fill fill, const Shape& global,
                        const Block& block) {
  std::int64_t bad = 0;
  for_each_element(global, block, [&](std::int64_t local, std::int64_t g) {
    const float v = expected_value(name, fill, g);
    if (t.dtype() == DType::bf16)
      bad += t.data<std::uint16_t>()[local] != checkpoint::float_to_bf16(v);
    else
      bad += std::memcmp(&t.data<float>()[local], &v, sizeof v) != 0;
  });
  return bad;
}

}  // namespace

ParameterSet make_parameters(const ModelConfig& config, Arena& arena, const ShardLayout& layout,
                             bool fill) {
  return make_parameters(parameter_specs(config), arena, layout, fill);
}

ParameterSet make_parameters(const std::vector<ParameterSpec>& specs, Arena& arena,
                             const ShardLayout& layout, bool fill) {
  ParameterSet set;
  for (const auto& spec : specs) {
    Parameter p;
    p.name = spec.name;
    p.global_shape = spec.shape;
    p.weight_decay = spec.weight_decay;
    const Block weights = layout.model_replicated
                              ? split(spec.shape, -1, 1, 0)
                              : split(spec.shape, layout.split_dim, layout.world, layout.rank);
    const Block optim = layout.optim_split_dim >= 0
                            ? split(spec.shape, layout.optim_split_dim, layout.world, layout.rank)
                            : weights;
    p.offset = weights.offset;
    p.optim_offset = optim.offset;
    p.value = Tensor::zeros(weights.shape, layout.bf16_weights ? DType::bf16 : DType::f32, arena);
    if (fill) fill_tensor(p.value, p.name, Fill::model, spec.shape, weights);
    if (layout.bf16_weights) {
      p.master = Tensor::zeros(optim.shape, DType::f32, arena);
      if (fill) fill_tensor(p.master, p.name, Fill::model, spec.shape, optim);
    }
    if (layout.optimizer) {
      p.adam_m = Tensor::zeros(optim.shape, DType::f32, arena);
      p.adam_v = Tensor::zeros(optim.shape, DType::f32, arena);
      if (fill) {
        fill_tensor(p.adam_m, p.name, Fill::m, spec.shape, optim);
        fill_tensor(p.adam_v, p.name, Fill::v, spec.shape, optim);
      }
    }
    set.add(std::move(p));
  }
  return set;
}

std::int64_t count_mismatches(const ParameterSet& params) {
  std::int64_t bad = 0;
  for (const auto& p : params.all()) {
    const Block weights{p.offset, p.value.shape()};
    bad += mismatches(p.value, p.name, Fill::model, p.global_shape, weights);
    const Shape optim_offset = p.optim_offset.empty() ? p.offset : p.optim_offset;
    if (p.master.defined())
      bad += mismatches(p.master, p.name, Fill::model, p.global_shape,
                        {optim_offset, p.master.shape()});
    if (p.adam_m.defined()) {
      const Block optim{optim_offset, p.adam_m.shape()};
      bad += mismatches(p.adam_m, p.name, Fill::m, p.global_shape, optim);
      bad += mismatches(p.adam_v, p.name, Fill::v, p.global_shape, optim);
    }
  }
  return bad;
}

CheckpointState sample_state(std::int64_t step, bool tied) {
  CheckpointState s;
  s.step = step;
  s.tokens = step * 4096;
  s.config = tiny_config_json(tied);
  s.layout = {{"tp", 1}, {"dp", 1}};
  s.data_position = {{"sample", step * 8}};
  s.rng = {{"seed", 1234}};
  s.extra = {{"note", "test"}};
  return s;
}

namespace {

// all_ok across threads: a reusable barrier that ANDs the flags of one round.
class Agreement {
 public:
  explicit Agreement(int world) : world_(world) {}
  bool all_ok(bool ok) {
    std::unique_lock lock(mutex_);
    const std::uint64_t round = round_;
    round_ok_ = round_ok_ && ok;
    if (++arrived_ == world_) {
      last_result_ = round_ok_;
      round_ok_ = true;
      arrived_ = 0;
      ++round_;
      changed_.notify_all();
    } else {
      changed_.wait(lock, [&] { return round_ != round; });
    }
    return last_result_;
  }

 private:
  int world_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
  std::uint64_t round_ = 0;
  bool round_ok_ = true;
  bool last_result_ = true;
};

}  // namespace

void run_ranks(int world, const std::function<void(int, const RankContext&)>& fn) {
  Agreement agreement(world);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      RankContext context;
      context.rank = r;
      context.world = world;
      context.all_ok = [&](bool ok) { return agreement.all_ok(ok); };
      try {
        fn(r, context);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace metamorph::test
