#include "runtime/train/evaluate.hpp"

#include <optional>
#include <vector>

#include "models/init.hpp"
#include "models/parameter_transfer.hpp"
#include "models/transformer.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/core/error.hpp"
#include "runtime/data/data_manifest.hpp"
#include "runtime/data/sample_loader.hpp"
#include "runtime/diffusion/diffusion_training.hpp"
#include "runtime/train/compute_device.hpp"

namespace metamorph {

EvalResult evaluate_checkpoint(const EvalOptions& o) {
  require(o.seq > 0, "eval: --seq must be positive, got ", o.seq);
  require(o.micro_batch > 0, "eval: --micro-batch must be positive, got ", o.micro_batch);
  require(o.batches >= 0, "eval: --batches must be >= 0, got ", o.batches);
  LoadOptions load;
  load.with_optimizer = false;
  const auto dir = resolve_checkpoint(o.checkpoint);
  // The config comes from the checkpoint itself; parameters are allocated to match it.
  const ModelConfig config = model_config_from_json(checkpoint::read_index_file(dir).state.config);
  require(o.seq <= config.max_position_embeddings, "eval: --seq ", o.seq,
          " exceeds the model's max_position_embeddings ", config.max_position_embeddings);
  // The CPU backend, or one GPU: the checkpoint's fp32 values are read into a host copy and
  // uploaded (bf16 weights), as `train --device cuda` loads them.
  ComputeDevice device = make_compute_device(o.device);
  Backend& backend = *device.backend;
  ParameterSet params = make_parameters(backend, config);
  CheckpointState state;
  if (o.device == Device::cpu) {
    state = load_checkpoint(dir, params, load);
  } else {
    ParameterSet host = host_parameters(backend, params, false);
    state = load_checkpoint(dir, host, load);
    upload_parameters(backend, host, params, false);
  }
  Transformer model(backend, config, params);
  // A block-diffusion checkpoint is scored by its NLL bound, with the same validation noise
  // its training run drew (docs/diffusion.md).
  std::optional<diffusion::DiffusionTrainingObjective> diffusion_bound;
  if (state.extra.value("objective", std::string("ar")) == "diffusion") {
    diffusion::DiffusionOptions d = diffusion::diffusion_options_from_json(state.extra);
    d.seed = state.extra.value("seed", std::uint64_t{0});
    diffusion_bound.emplace(backend, model, d);
  }

  const data::IndexedDataset dataset(o.data_prefix);
  data::LoaderOptions options;
  options.seq = o.seq;
  options.shuffle = false;
  options.validation_fraction = data::recorded_validation_fraction(o.data_prefix);
  if (options.validation_fraction > 0) options.split = data::Split::kValidation;
  const data::SampleLoader loader(dataset, options);
  const std::int64_t available = loader.samples_per_epoch();
  const std::int64_t wanted =
      o.batches == 0 ? available : std::min(available, o.batches * o.micro_batch);

  EvalResult result;
  result.step = state.step;
  double sum = 0.0;
  std::vector<std::int32_t> row(static_cast<std::size_t>(o.seq + 1));
  for (std::int64_t first = 0; first < wanted; first += o.micro_batch) {
    const std::int64_t rows = std::min(o.micro_batch, wanted - first);
    // Filled on the host, then moved to the backend's device (the identity on the CPU).
    Tensor inputs = backend.host_empty({rows, o.seq}, DType::i32),
           targets = backend.host_empty({rows, o.seq}, DType::i32);
    for (std::int64_t r = 0; r < rows; ++r) {
      loader.sample(first + r, row.data());
      for (std::int64_t i = 0; i < o.seq; ++i) {
        inputs.data<std::int32_t>()[r * o.seq + i] = row[static_cast<std::size_t>(i)];
        targets.data<std::int32_t>()[r * o.seq + i] = row[static_cast<std::size_t>(i + 1)];
      }
    }
    inputs = backend.from_host(inputs, DType::i32);
    targets = backend.from_host(targets, DType::i32);
    std::vector<std::int32_t> rows_buffer;
    if (diffusion_bound) {
      rows_buffer.resize(static_cast<std::size_t>(rows * (o.seq + 1)));
      for (std::int64_t r = 0; r < rows; ++r)
        loader.sample(first + r, rows_buffer.data() + r * (o.seq + 1));
    }
    const LossSum l = diffusion_bound ? diffusion_bound->loss(rows_buffer.data(), rows, o.seq,
                                                              first / o.micro_batch)
                                      : model.loss(inputs, targets);
    sum += l.sum;
    result.tokens += l.tokens;
  }
  result.loss = result.tokens > 0 ? sum / static_cast<double>(result.tokens) : 0.0;
  return result;
}

}  // namespace metamorph
