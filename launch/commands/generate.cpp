#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command generate_command() {
  return {"generate", "generate (not built yet)", nullptr, {}, not_built_yet("generate")};
}

}  // namespace metamorph::cli
