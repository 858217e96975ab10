#include "runtime/decode/generate_run.hpp"

#include "models/init.hpp"
#include "models/parameter_transfer.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/core/error.hpp"
#include "runtime/data/tokenizer.hpp"
#include "runtime/decode/ar_decoder.hpp"
#include "runtime/decode/diffusion_decoder.hpp"
#include "runtime/diffusion/diffusion_training.hpp"
#include "runtime/train/compute_device.hpp"

namespace metamorph::decode {

GenerateRunResult run_generate(const GenerateRunOptions& o) {
  require(!o.ckpt.empty(), "generate: --ckpt CKPT is required");
  const auto dir = resolve_checkpoint(o.ckpt);
  const CheckpointState probe = checkpoint::read_index_file(dir).state;
  const ModelConfig config = model_config_from_json(probe.config);
  const bool diffusion_ckpt = probe.extra.value("objective", std::string("ar")) == "diffusion";
  const diffusion::DiffusionOptions trained =
      diffusion_ckpt ? diffusion::diffusion_options_from_json(probe.extra)
                     : diffusion::DiffusionOptions{};

  GenerateRunResult result;
  result.mode = o.mode.empty() ? (diffusion_ckpt ? "diffusion" : "ar") : o.mode;
  require(result.mode == "ar" || result.mode == "diffusion", "generate: --mode '", result.mode,
          "'; valid: ar, diffusion");
  require(result.mode == "ar" || diffusion_ckpt, "generate: --mode diffusion needs a checkpoint ",
          "trained with --objective diffusion (", dir.string(), " has no [MASK] token)");

  const std::string prefix =
      !o.data_prefix.empty() ? o.data_prefix : probe.extra.value("data", std::string());
  require(!prefix.empty(), "generate: the checkpoint does not record its dataset; give --data ",
          "PREFIX for the tokenizer");
  const auto tokenizer = data::load_tokenizer(prefix);
  require(!o.prompt.empty(), "generate: the prompt is empty; give --prompt TEXT or --prompt-file");
  const std::vector<std::int32_t> prompt = tokenizer->encode(o.prompt);
  require(!prompt.empty(), "generate: the prompt encodes to no tokens");
  for (std::int32_t id : prompt)
    require(id >= 0 && id < config.vocab_size, "generate: prompt token ", id,
            " is outside the model's vocabulary of ", config.vocab_size,
            "; is --data the dataset the model was trained on?");
  check_prompt(config, static_cast<std::int64_t>(prompt.size()), o.max_tokens);

  // The model on the CPU backend, or on one GPU (bf16 weights from the checkpoint's fp32
  // masters: read into a host copy, then uploaded, as `train --device cuda` loads).
  ComputeDevice device = make_compute_device(o.device);
  Backend& backend = *device.backend;
  ParameterSet params = make_parameters(backend, config);
  LoadOptions load;
  load.with_optimizer = false;
  if (o.device == Device::cpu) {
    load_checkpoint(dir, params, load);
  } else {
    ParameterSet host = host_parameters(backend, params, false);
    load_checkpoint(dir, host, load);
    upload_parameters(backend, host, params, false);
  }
  Transformer model(backend, config, params);

  if (result.mode == "ar") {
    ArDecodeOptions ar;
    ar.sampling = o.sampling;
    ar.excluded_token = diffusion_ckpt ? trained.mask_token : -1;
    result.generation = generate_ar(model, prompt, o.max_tokens, ar);
  } else {
    DiffusionDecodeOptions d;
    d.block_size = o.block_size > 0 ? o.block_size : trained.block_size;
    d.threshold = o.threshold;
    d.steps_per_block = o.steps_per_block;
    d.mask_token = trained.mask_token;
    d.logit_shift = trained.logit_shift;
    d.sampling = o.sampling;
    result.generation = generate_diffusion(model, prompt, o.max_tokens, d);
  }
  // Ids the tokenizer does not know (a model vocabulary padded beyond it) decode to nothing.
  std::vector<std::int32_t> known;
  for (std::int32_t id : result.generation.tokens)
    if (id < tokenizer->vocab_size()) known.push_back(id);
  result.text = tokenizer->decode(known);
  return result;
}

}  // namespace metamorph::decode
