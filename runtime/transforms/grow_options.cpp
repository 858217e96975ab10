#include "runtime/transforms/grow_options.hpp"

#include <cctype>

#include "runtime/core/error.hpp"

namespace metamorph {

GrowMethod parse_grow_method(const std::string& name) {
  if (name == "fpi") return GrowMethod::fpi;
  if (name == "aki") return GrowMethod::aki;
  if (name == "zero") return GrowMethod::zero;
  throw InputError(concat("grow method '", name, "' is not one of: fpi, aki, zero"));
}

DepthPlacement parse_depth_placement(const std::string& name) {
  if (name == "interleave") return DepthPlacement::interleave;
  if (name == "stack") return DepthPlacement::stack;
  throw InputError(concat("depth placement '", name, "' is not one of: interleave, stack"));
}

DepthInit parse_depth_init(const std::string& name) {
  if (name == "zero") return DepthInit::zero_output;
  if (name == "copy") return DepthInit::copy;
  throw InputError(concat("depth init '", name, "' is not one of: zero, copy"));
}

HiddenCopies parse_hidden_copies(const std::string& name) {
  if (name == "scaled") return HiddenCopies::scaled;
  if (name == "plain") return HiddenCopies::plain;
  throw InputError(concat("hidden copies '", name, "' is not one of: scaled, plain"));
}

std::vector<std::int64_t> parse_layer_positions(const std::string& list) {
  std::vector<std::int64_t> out;
  std::size_t begin = 0;
  while (begin <= list.size()) {
    const std::size_t end = std::min(list.find(',', begin), list.size());
    const std::string item = list.substr(begin, end - begin);
    bool digits = !item.empty() && item.size() < 18;
    for (const char ch : item) digits = digits && std::isdigit(static_cast<unsigned char>(ch));
    require(digits, "layer positions '", list,
            "': expected comma-separated non-negative integers, got '", item, "'");
    out.push_back(std::stoll(item));
    begin = end + 1;
  }
  return out;
}

std::string to_string(GrowMethod method) {
  switch (method) {
    case GrowMethod::fpi:
      return "fpi";
    case GrowMethod::aki:
      return "aki";
    case GrowMethod::zero:
      return "zero";
  }
  return "?";
}

std::string to_string(DepthPlacement placement) {
  return placement == DepthPlacement::interleave ? "interleave" : "stack";
}

std::string to_string(DepthInit init) {
  return init == DepthInit::zero_output ? "zero" : "copy";
}

std::string to_string(HiddenCopies copies) {
  return copies == HiddenCopies::scaled ? "scaled" : "plain";
}

}  // namespace metamorph
