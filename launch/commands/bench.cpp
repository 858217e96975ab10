#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command bench_command() {
  return {"bench", "bench (not built yet)", nullptr, {}, not_built_yet("bench")};
}

}  // namespace metamorph::cli
