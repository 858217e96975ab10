#pragma once
// A `metamorph` subcommand: its options (Boost.Program_options) and what it does with them.
#include <boost/program_options.hpp>
#include <functional>
#include <string>
#include <vector>

namespace metamorph::cli {

namespace po = boost::program_options;

struct Command {
  std::string name;
  std::string summary;
  // Options beyond the common --help/--config; may be empty.
  std::function<po::options_description()> options;
  // Positional arguments, in order (e.g. `ckpt inspect DIR`); may be empty.
  std::vector<std::string> positional;
  std::function<int(const po::variables_map&)> run;
};

// The table of subcommands, in the order `metamorph --help` lists them.
const std::vector<Command>& commands();

// Each subcommand's definition lives in launch/commands/<name>.cpp.
Command plan_command();
Command train_command();
Command eval_command();
Command logits_command();
Command grow_command();
Command upcycle_command();
Command generate_command();
Command data_command();
Command ckpt_command();
Command bench_command();
Command version_command();

}  // namespace metamorph::cli
