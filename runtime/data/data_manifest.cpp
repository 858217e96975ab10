#include "runtime/data/data_manifest.hpp"

#include <filesystem>
#include <fstream>

#include "runtime/core/error.hpp"

namespace metamorph::data {

std::string manifest_path(const std::string& prefix) {
  return prefix + ".data.json";
}

void stage_manifest(const nlohmann::json& manifest, const std::string& prefix,
                    StagedFiles& staging) {
  const auto temp = staging.stage(manifest_path(prefix));
  std::ofstream out(temp, std::ios::trunc);
  out << manifest.dump(2) << "\n";
  out.close();
  require(!out.fail(), "cannot write ", temp.string(), " (disk full?)");
}

double recorded_validation_fraction(const std::string& prefix) {
  const std::string path = manifest_path(prefix);
  if (!std::filesystem::exists(path)) return 0.0;
  std::ifstream in(path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(concat(path, ": not valid JSON (", e.what(), ")"));
  }
  require(doc.is_object() && doc.contains("validation_fraction") &&
              doc["validation_fraction"].is_number(),
          path, ": \"validation_fraction\" must be a number");
  return doc["validation_fraction"].get<double>();
}

}  // namespace metamorph::data
