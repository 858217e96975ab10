#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command eval_command() {
  return {"eval", "eval (not built yet)", nullptr, {}, not_built_yet("eval")};
}

}  // namespace metamorph::cli
