#include "runtime/diffusion/diffusion_training.hpp"

namespace metamorph::diffusion {

namespace {
DiffusionOptions with_seed(DiffusionOptions options, std::uint64_t seed) {
  options.seed = seed;
  return options;
}
}  // namespace

DiffusionTrainingObjective::DiffusionTrainingObjective(Backend& backend, Transformer& model,
                                                       DiffusionOptions options)
    : train_(backend, model, options),
      validation_(backend, model, with_seed(options, options.seed ^ 0x76616C6964617465ull)) {}

std::vector<std::int32_t> DiffusionTrainingObjective::inputs(const std::int32_t* rows,
                                                             std::int64_t count,
                                                             std::int64_t seq) const {
  std::vector<std::int32_t> clean(static_cast<std::size_t>(count * seq));
  for (std::int64_t r = 0; r < count; ++r)
    std::copy(rows + r * (seq + 1), rows + r * (seq + 1) + seq,
              clean.begin() + static_cast<std::ptrdiff_t>(r * seq));
  return clean;
}

std::vector<ModelPass> DiffusionTrainingObjective::training_passes(
    const std::int32_t* rows, std::int64_t count, std::int64_t seq, std::int64_t step,
    std::int64_t first_row, std::int64_t global_rows) {
  const auto clean = inputs(rows, count, seq);
  return train_.passes(clean.data(), count, seq, {step, first_row, global_rows});
}

std::vector<ModelPass> DiffusionTrainingObjective::validation_passes(const std::int32_t* rows,
                                                                     std::int64_t count,
                                                                     std::int64_t seq,
                                                                     std::int64_t batch_index) {
  const auto clean = inputs(rows, count, seq);
  return validation_.passes(clean.data(), count, seq, {batch_index, 0, count});
}

LossSum DiffusionTrainingObjective::loss(const std::int32_t* rows, std::int64_t count,
                                         std::int64_t seq, std::int64_t batch_index) {
  const auto clean = inputs(rows, count, seq);
  return validation_.loss(clean.data(), count, seq, {batch_index, 0, count});
}

nlohmann::json diffusion_options_to_json(const DiffusionOptions& o) {
  return {{"objective", "diffusion"},
          {"block_size", o.block_size},
          {"mask_token", o.mask_token},
          {"logit_shift", o.logit_shift},
          {"mask_schedule", mask_schedule_name(o.masking.schedule)},
          {"mask_beta", o.masking.beta},
          {"ar_weight", o.ar_weight}};
}

DiffusionOptions diffusion_options_from_json(const nlohmann::json& json) {
  DiffusionOptions o;
  o.block_size = json.value("block_size", o.block_size);
  o.mask_token = json.value("mask_token", o.mask_token);
  o.logit_shift = json.value("logit_shift", o.logit_shift);
  o.masking.schedule = parse_mask_schedule(json.value("mask_schedule", std::string("uniform")));
  o.masking.beta = json.value("mask_beta", o.masking.beta);
  o.ar_weight = json.value("ar_weight", o.ar_weight);
  return o;
}

}  // namespace metamorph::diffusion
