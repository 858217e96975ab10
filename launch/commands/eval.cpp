// `metamorph eval`: validation loss of a checkpoint.
#include <iostream>
#include <nlohmann/json.hpp>

#include "launch/cli/command.hpp"
#include "runtime/core/error.hpp"
#include "runtime/train/compute_device.hpp"
#include "runtime/train/evaluate.hpp"

namespace metamorph::cli {

Command eval_command() {
  return {
      "eval",
      "validation loss of a checkpoint on a dataset's validation split",
      [] {
        po::options_description o;
        // clang-format off
            o.add_options()
              ("ckpt", po::value<std::string>()->required(), "checkpoint directory (its latest step) or one step's directory")
              ("data", po::value<std::string>()->required(), "dataset prefix")
              ("seq", po::value<std::int64_t>()->default_value(256), "sequence length")
              ("micro-batch", po::value<std::int64_t>()->default_value(4), "sequences per forward pass")
              ("batches", po::value<std::int64_t>()->default_value(8), "micro-batches to evaluate (0: the whole split)")
              ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda (one GPU: bf16 weights and activations)")
              ("json", po::bool_switch(), "print {\"loss\", \"tokens\"} as JSON");
        // clang-format on
        return o;
      },
      {},
      [](const po::variables_map& vm) {
        EvalOptions o;
        o.checkpoint = vm["ckpt"].as<std::string>();
        o.data_prefix = vm["data"].as<std::string>();
        o.seq = vm["seq"].as<std::int64_t>();
        o.micro_batch = vm["micro-batch"].as<std::int64_t>();
        o.batches = vm["batches"].as<std::int64_t>();
        o.device = parse_device(vm["device"].as<std::string>());
        const EvalResult r = evaluate_checkpoint(o);
        if (vm["json"].as<bool>()) {
          std::cout
              << nlohmann::json({{"loss", r.loss}, {"tokens", r.tokens}, {"step", r.step}}).dump()
              << std::endl;
        } else {
          std::cout << "validation loss " << r.loss << " over " << r.tokens
                    << " tokens (checkpoint step " << r.step << ")" << std::endl;
        }
        return 0;
      }};
}

}  // namespace metamorph::cli
