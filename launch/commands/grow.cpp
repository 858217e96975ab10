#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command grow_command() {
  return {"grow", "grow (not built yet)", nullptr, {}, not_built_yet("grow")};
}

}  // namespace metamorph::cli
