#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command upcycle_command() {
  return {"upcycle", "upcycle (not built yet)", nullptr, {}, not_built_yet("upcycle")};
}

}  // namespace metamorph::cli
