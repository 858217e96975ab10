#pragma once
// Named model presets (`metamorph plan --preset NAME`): the published shapes the planner is
// checked against and the models metamorph is built for. configs/<name>.json holds the same.
#include <string>
#include <vector>

#include "planner/model_shape.hpp"

namespace metamorph::planner {

std::vector<std::string> preset_names();
// Throws InputError listing the known names.
ModelShape preset_model(const std::string& name);
nlohmann::json preset_config(const std::string& name);

}  // namespace metamorph::planner
