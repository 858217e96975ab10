#include "launch/commands/unavailable.hpp"

namespace metamorph::cli {

Command train_command() {
  return {"train", "train (not built yet)", nullptr, {}, not_built_yet("train")};
}

}  // namespace metamorph::cli
