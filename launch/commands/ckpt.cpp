#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command ckpt_command() {
  return {"ckpt", "ckpt (not built yet)", nullptr, {}, not_built_yet("ckpt")};
}

}  // namespace metamorph::cli
