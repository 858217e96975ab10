#pragma once
// Commands whose runtime has not landed yet still parse and document their options, then say so.
#include "launch/cli/command.hpp"
#include "runtime/core/error.hpp"

namespace metamorph::cli {

inline std::function<int(const po::variables_map&)> not_built_yet(const std::string& name) {
  return [name](const po::variables_map&) -> int {
    throw InputError(concat("'metamorph ", name, "' is not available in this build yet"));
  };
}

}  // namespace metamorph::cli
