#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command data_command() {
  return {"data", "data (not built yet)", nullptr, {}, not_built_yet("data")};
}

}  // namespace metamorph::cli
