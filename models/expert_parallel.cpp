#include "models/expert_parallel.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {
constexpr const char* kExperts = ".mlp.experts.";
}

bool is_expert_parameter(const std::string& name) {
  return name.find(kExperts) != std::string::npos;
}

std::int64_t expert_index(const std::string& name) {
  const auto at = name.find(kExperts);
  MM_ASSERT(at != std::string::npos, "not an expert parameter: ", name);
  return std::stoll(name.substr(at + std::string(kExperts).size()));
}

}  // namespace metamorph
