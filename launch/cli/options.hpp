#pragma once
// Option parsing shared by every subcommand: --help, a JSON --config file that the command line
// overrides, and errors that name the option and say where the valid choices are listed.
#include <optional>
#include <string>
#include <vector>

#include "launch/cli/command.hpp"

namespace metamorph::cli {

// Parses `args` (everything after the subcommand name). Returns nullopt after printing help.
// Throws InputError for unknown options, bad values, missing required ones.
std::optional<po::variables_map> parse_command_line(const Command& command,
                                                    const std::string& program_path,
                                                    const std::vector<std::string>& args);

// Help text: usage line, summary, and every option with its default.
std::string command_help(const Command& command, const std::string& program_path);

// Converts a JSON object {"steps": 10, "zero1": true} into "--steps=10 --zero1" style arguments
// (false switches are left out; arrays repeat the option). Throws InputError on anything else.
std::vector<std::string> json_config_to_args(const std::string& path);

}  // namespace metamorph::cli
