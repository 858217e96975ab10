// `metamorph generate`: AR or block-diffusion decoding of a checkpoint (docs/diffusion.md).
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "launch/cli/command.hpp"
#include "runtime/core/error.hpp"
#include "runtime/decode/generate_run.hpp"
#include "runtime/train/compute_device.hpp"

namespace metamorph::cli {

namespace {

po::options_description generate_options() {
  po::options_description o;
  // clang-format off
  o.add_options()
    ("ckpt", po::value<std::string>(), "checkpoint directory (its latest step) or one step's directory")
    ("prompt", po::value<std::string>(), "prompt text")
    ("prompt-file", po::value<std::string>(), "file whose whole content is the prompt")
    ("max-tokens", po::value<std::int64_t>()->default_value(64), "tokens to generate")
    ("mode", po::value<std::string>(), "ar | diffusion (default: diffusion for a diffusion checkpoint, else ar)")
    ("block-size", po::value<std::int64_t>()->default_value(0), "diffusion: block size (0: the trained one)")
    ("threshold", po::value<double>()->default_value(0.9), "diffusion: commit tokens whose confidence reaches this")
    ("steps-per-block", po::value<std::int64_t>()->default_value(0), "diffusion: at most this many passes per block (0: block size)")
    ("temperature", po::value<double>()->default_value(0.0), "sampling temperature (0: greedy)")
    ("top-p", po::value<double>()->default_value(1.0), "nucleus sampling mass")
    ("seed", po::value<std::uint64_t>()->default_value(0), "sampling seed")
    ("data", po::value<std::string>(), "dataset prefix whose tokenizer to use (default: the checkpoint's)")
    ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda (one GPU: bf16 weights and activations)")
    ("json", po::bool_switch(), "print one JSON object");
  // clang-format on
  return o;
}

std::string read_prompt_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "generate: cannot read --prompt-file ", path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int run_generate_command(const po::variables_map& vm) {
  require(vm.count("prompt") + vm.count("prompt-file") == 1,
          "generate: give exactly one of --prompt TEXT or --prompt-file PATH");
  decode::GenerateRunOptions o;
  o.ckpt = vm.count("ckpt") ? vm["ckpt"].as<std::string>() : std::string();
  o.prompt = vm.count("prompt") ? vm["prompt"].as<std::string>()
                                : read_prompt_file(vm["prompt-file"].as<std::string>());
  o.max_tokens = vm["max-tokens"].as<std::int64_t>();
  o.mode = vm.count("mode") ? vm["mode"].as<std::string>() : std::string();
  o.block_size = vm["block-size"].as<std::int64_t>();
  o.threshold = vm["threshold"].as<double>();
  o.steps_per_block = vm["steps-per-block"].as<std::int64_t>();
  o.sampling.temperature = vm["temperature"].as<double>();
  o.sampling.top_p = vm["top-p"].as<double>();
  o.sampling.seed = vm["seed"].as<std::uint64_t>();
  o.data_prefix = vm.count("data") ? vm["data"].as<std::string>() : std::string();
  o.device = parse_device(vm["device"].as<std::string>());
  const decode::GenerateRunResult r = decode::run_generate(o);
  const decode::Generation& g = r.generation;
  if (vm["json"].as<bool>()) {
    std::cout << nlohmann::json{{"text", r.text},
                                {"mode", r.mode},
                                {"new_tokens", g.tokens.size()},
                                {"forward_passes", g.forward_passes},
                                {"tokens_per_forward", g.tokens_per_forward()},
                                {"tokens_per_s", g.tokens_per_s()},
                                {"tokens_per_cpu_s", g.tokens_per_cpu_s()}}
                     // A byte-level model may emit bytes that are not UTF-8: replace them.
                     .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    std::cout << r.text << "\n"
              << "[" << r.mode << ": " << g.tokens.size() << " tokens, " << g.forward_passes
              << " forward passes, " << g.tokens_per_forward() << " tokens/pass, "
              << g.tokens_per_s() << " tokens/s, " << g.tokens_per_cpu_s()
              << " tokens per CPU second]\n";
  }
  return 0;
}

}  // namespace

Command generate_command() {
  return {"generate",
          "AR or block-diffusion decoding of a checkpoint",
          generate_options,
          {},
          run_generate_command};
}

}  // namespace metamorph::cli
