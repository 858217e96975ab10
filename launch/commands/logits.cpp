// `metamorph logits`: a checkpoint's fp32 logits for the token rows of a file, as .npy.
#include <iostream>
#include <nlohmann/json.hpp>

#include "launch/cli/command.hpp"
#include "runtime/train/compute_device.hpp"
#include "runtime/train/logits_run.hpp"

namespace metamorph::cli {

Command logits_command() {
  return {
      "logits",
      "a checkpoint's logits for token rows from a file, written as fp32 .npy",
      [] {
        po::options_description o;
        // clang-format off
            o.add_options()
              ("ckpt", po::value<std::string>()->required(), "checkpoint directory (its latest step) or one step's directory")
              ("tokens", po::value<std::string>()->required(), "token ids: .npy of integers, [seq] or [batch, seq]; any other file is raw little-endian int32")
              ("seq", po::value<std::int64_t>()->default_value(0), "raw token files: tokens per row (0: the whole file is one row)")
              ("out", po::value<std::string>()->required(), ".npy to write: float32 [batch, seq, vocab]")
              ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda (bf16 weights and activations, one GPU)")
              ("micro-batch", po::value<std::int64_t>()->default_value(8), "rows per forward pass")
              ("json", po::bool_switch(), "print {\"batch\", \"seq\", \"vocab\", \"step\", \"device\", \"forward_s\"} as JSON");
        // clang-format on
        return o;
      },
      {},
      [](const po::variables_map& vm) {
        LogitsOptions o;
        o.checkpoint = vm["ckpt"].as<std::string>();
        o.tokens = vm["tokens"].as<std::string>();
        o.seq = vm["seq"].as<std::int64_t>();
        o.out = vm["out"].as<std::string>();
        const std::string device = vm["device"].as<std::string>();
        o.device = parse_device(device);
        o.micro_batch = vm["micro-batch"].as<std::int64_t>();
        const LogitsResult r = write_logits(o);
        if (vm["json"].as<bool>()) {
          std::cout << nlohmann::json({{"batch", r.batch},
                                       {"seq", r.seq},
                                       {"vocab", r.vocab},
                                       {"step", r.step},
                                       {"device", device},
                                       {"forward_s", r.forward_seconds}})
                           .dump()
                    << std::endl;
        } else {
          std::cout << "logits [" << r.batch << ", " << r.seq << ", " << r.vocab << "] on "
                    << device << " (checkpoint step " << r.step << ") written to " << o.out
                    << " in " << r.forward_seconds << " s" << std::endl;
        }
        return 0;
      }};
}

}  // namespace metamorph::cli
