#include "launch/cli/options.hpp"

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/core/error.hpp"

namespace metamorph::cli {

namespace {

po::options_description full_description(const Command& command) {
  po::options_description all(command.name + " options");
  all.add_options()("help,h", "print this help and exit")(
      "config", po::value<std::string>(), "JSON file of options; the command line overrides it");
  if (command.options) all.add(command.options());
  return all;
}

po::positional_options_description positional_of(const Command& command) {
  po::positional_options_description pos;
  for (const auto& name : command.positional) pos.add(name.c_str(), 1);
  return pos;
}

std::string json_scalar(const nlohmann::json& value, const std::string& key,
                        const std::string& path) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer()) return std::to_string(value.get<long long>());
  if (value.is_number()) {
    std::ostringstream out;
    out.precision(17);
    out << value.get<double>();
    return out.str();
  }
  throw InputError(concat(path, ": option '", key, "' must be a string, number, boolean or list",
                          " of those, got ", value.type_name()));
}

}  // namespace

std::vector<std::string> json_config_to_args(const std::string& path) {
  std::ifstream in(path);
  require(in.good(), "--config ", path, ": cannot open the file");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat("--config ", path, ": not valid JSON (", e.what(), ")"));
  }
  require(doc.is_object(), "--config ", path, ": expected a JSON object of option names");
  std::vector<std::string> args;
  for (const auto& [key, value] : doc.items()) {
    if (value.is_boolean()) {
      if (value.get<bool>()) args.push_back("--" + key);
    } else if (value.is_array()) {
      for (const auto& item : value)
        args.push_back("--" + key + "=" + json_scalar(item, key, path));
    } else {
      args.push_back("--" + key + "=" + json_scalar(value, key, path));
    }
  }
  return args;
}

std::string command_help(const Command& command, const std::string& program_path) {
  std::ostringstream out;
  out << "usage: " << program_path << " " << command.name;
  for (const auto& p : command.positional) out << " " << p;
  out << " [options]\n\n" << command.summary << "\n\n" << full_description(command);
  return out.str();
}

std::optional<po::variables_map> parse_command_line(const Command& command,
                                                    const std::string& program_path,
                                                    const std::vector<std::string>& args) {
  const auto description = full_description(command);
  const auto positional = positional_of(command);
  const std::string hint = concat("; see '", program_path, " ", command.name, " --help'");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(description).positional(positional).run(), vm);
    if (vm.count("help")) {
      std::cout << command_help(command, program_path);
      return std::nullopt;
    }
    if (vm.count("config")) {
      const auto config_args = json_config_to_args(vm["config"].as<std::string>());
      // Values already stored from the command line win: store() never overwrites them.
      po::store(po::command_line_parser(config_args).options(description).run(), vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw InputError(concat(command.name, ": ", e.what(), hint));
  }
  return vm;
}

}  // namespace metamorph::cli
