#include "launch/cli/app.hpp"

#include <iostream>
#include <new>

#include "launch/cli/options.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      plan_command(), train_command(),   eval_command(),     logits_command(),
      grow_command(), upcycle_command(), generate_command(), data_command(),
      ckpt_command(), bench_command(),   version_command(),
  };
  return table;
}

namespace {

void print_overview(std::ostream& out, const std::string& program) {
  out << "usage: " << program << " <command> [options]\n\n"
      << "Plans, trains and reshapes Mixture-of-Experts language models.\n\ncommands:\n";
  for (const auto& c : commands()) {
    out << "  " << c.name << std::string(c.name.size() < 10 ? 10 - c.name.size() : 1, ' ')
        << c.summary << "\n";
  }
  out << "\n'" << program << " <command> --help' lists a command's options and their defaults.\n";
}

const Command& find_command(const std::string& name) {
  for (const auto& c : commands())
    if (c.name == name) return c;
  std::string valid;
  for (const auto& c : commands()) valid += (valid.empty() ? "" : ", ") + c.name;
  throw InputError(concat("unknown command '", name, "'; valid commands: ", valid));
}

}  // namespace

int run_cli(int argc, char** argv) {
  const std::string program = "metamorph";
  try {
    if (argc < 2) {
      print_overview(std::cerr, program);
      return 2;
    }
    const std::string first = argv[1];
    if (first == "--help" || first == "-h" || first == "help") {
      print_overview(std::cout, program);
      return 0;
    }
    if (first == "--version") return find_command("version").run({});
    const Command& command = find_command(first);
    const std::vector<std::string> args(argv + 2, argv + argc);
    const auto vm = parse_command_line(command, program, args);
    if (!vm) return 0;
    return command.run(*vm);
  } catch (const InputError& e) {
    std::cerr << program << ": error: " << e.what() << std::endl;
    return 2;
  } catch (const CheckFailed& e) {
    std::cerr << program << ": check failed: " << e.what() << std::endl;
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << program << ": error: out of memory" << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": internal error: " << e.what() << std::endl;
    return 3;
  }
}

}  // namespace metamorph::cli
