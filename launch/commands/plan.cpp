#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command plan_command() {
  return {"plan", "plan (not built yet)", nullptr, {}, not_built_yet("plan")};
}

}  // namespace metamorph::cli
