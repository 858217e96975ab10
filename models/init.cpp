#include "models/init.hpp"

#include <cmath>

#include "models/parameter_transfer.hpp"
#include "models/tensor_parallel.hpp"
#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"

namespace metamorph {

ParameterSet make_parameters(Backend& backend, const ModelConfig& config, const TensorParallel& tp,
                             const PipelineStage& stage, const ExpertParallel& ep) {
  const std::int64_t experts = config.moe.num_experts;
  require(ep.size == 1 || (experts > 0 && experts % ep.size == 0), "expert parallelism: --ep ",
          ep.size, " does not divide the number of experts (", experts, ")");
  const std::int64_t first_expert = ep.first(experts), local_experts = ep.count(experts);
  ParameterSet params;
  std::int64_t total = 0;
  std::vector<std::pair<Shape, Shape>> blocks;  // local shape, offset
  std::vector<ParameterSpec> specs;
  for (auto& spec : parameter_specs(config))
    if (stage.holds(spec.name, config.num_layers, config.tie_word_embeddings)) {
      if (is_expert_parameter(spec.name)) {
        const std::int64_t e = expert_index(spec.name);
        if (e < first_expert || e >= first_expert + local_experts) continue;
      }
      specs.push_back(spec);
    }
  for (const auto& spec : specs) {
    Shape local = spec.shape, offset(spec.shape.size(), 0);
    const int dim = tp_split_dim(spec.name);
    // Experts split over the expert-TP group, everything else over the TP group.
    const bool expert = is_expert_parameter(spec.name) && ep.tp_size > 0;
    const int split = expert ? ep.tp_size : tp.size, split_rank = expert ? ep.tp_rank : tp.rank;
    if (split > 1 && is_vocab_parallel(spec.name)) {
      const VocabShard shard = vocab_shard(spec.shape[0], split, split_rank);
      local[0] = shard.rows;
      offset[0] = shard.offset;
    } else if (split > 1 && dim >= 0) {
      const auto d = static_cast<std::size_t>(dim);
      require(local[d] % split == 0, spec.name, ": dimension ", dim, " (", local[d],
              ") does not split over ", split, " tensor-parallel ranks");
      local[d] /= split;
      offset[d] = local[d] * split_rank;
    }
    total += shape_numel(local);
    blocks.emplace_back(local, offset);
  }
  Tensor grads = backend.zeros({total});
  std::int64_t at = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    Parameter p;
    p.name = specs[i].name;
    p.global_shape = specs[i].shape;
    p.offset = blocks[i].second;
    p.value = backend.empty(blocks[i].first, backend.activation_dtype());
    // bf16 weights (GPU) are updated through an fp32 master; f32 weights are their own master.
    if (p.value.dtype() != DType::f32) p.master = backend.empty(blocks[i].first, DType::f32);
    const std::int64_t n = shape_numel(blocks[i].first);
    p.grad = grads.slice(at, at + n).view(blocks[i].first);
    at += n;
    p.weight_decay = specs[i].weight_decay;
    p.trainable = specs[i].trainable;
    params.add(std::move(p));
  }
  params.flat_grads = grads;
  return params;
}

double init_std(const std::string& name, const ModelConfig& config) {
  // Biases, and the router's balancing bias (which starts neutral), start at zero.
  if (name.ends_with(".bias") || name.ends_with("e_score_correction_bias")) return 0.0;
  if (name.ends_with("norm.weight") || name.ends_with("layernorm.weight")) return -1.0;
  const double base = config.initializer_range;
  if (name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight"))
    return base / std::sqrt(2.0 * static_cast<double>(config.num_layers));
  return base;
}

void fill_normal_global(Parameter& p, std::uint64_t seed, double std) {
  const rng::Stream stream(seed, p.name);
  const Shape& local = p.value.shape();
  const int rank = static_cast<int>(local.size());
  float* data = p.value.data<float>();
  const std::int64_t n = p.value.numel();
  // Row-major strides of the global tensor, to turn a local multi-index into a global index.
  std::vector<std::int64_t> global_stride(static_cast<std::size_t>(rank), 1);
  for (int d = rank - 2; d >= 0; --d)
    global_stride[static_cast<std::size_t>(d)] = global_stride[static_cast<std::size_t>(d + 1)] *
                                                 p.global_shape[static_cast<std::size_t>(d + 1)];
#pragma omp parallel for if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t rest = i, global = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const auto du = static_cast<std::size_t>(d);
      const std::int64_t coord = rest % local[du];
      rest /= local[du];
      global += (coord + p.offset[du]) * global_stride[du];
    }
    data[i] = static_cast<float>(std * stream.normal(static_cast<std::uint64_t>(global)));
  }
}

namespace {

// p.value must be host f32.
void init_host_parameter(Parameter& p, const ModelConfig& config, std::uint64_t seed) {
  const double std = init_std(p.name, config);
  float* data = p.value.data<float>();
  const std::int64_t n = p.value.numel();
  if (std < 0) {
    for (std::int64_t i = 0; i < n; ++i) data[i] = 1.0f;
  } else if (std == 0) {
    for (std::int64_t i = 0; i < n; ++i) data[i] = 0.0f;
  } else {
    fill_normal_global(p, seed, std);
  }
}

}  // namespace

void init_parameters(ParameterSet& params, const ModelConfig& config, std::uint64_t seed) {
  for (auto& p : params.all()) init_host_parameter(p, config, seed);
}

void init_parameters(Backend& backend, ParameterSet& params, const ModelConfig& config,
                     std::uint64_t seed) {
  for (auto& p : params.all()) {
    if (p.value.device() == Device::cpu && p.value.dtype() == DType::f32) {
      init_host_parameter(p, config, seed);
      continue;
    }
    // Drawn in f32 on the host exactly as on the CPU, then uploaded: the same seed gives the
    // same fp32 master on every device.
    Parameter host = p;
    host.value = backend.host_empty(p.value.shape(), DType::f32);
    init_host_parameter(host, config, seed);
    set_parameter_from_host(backend, p, host.value);
  }
}

}  // namespace metamorph
