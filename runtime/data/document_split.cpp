#include "runtime/data/document_split.hpp"

#include <algorithm>
#include <cmath>

#include "runtime/core/error.hpp"
#include "runtime/data/keyed_permutation.hpp"

namespace metamorph::data {

std::string split_name(Split split) {
  return split == Split::kTrain ? "train" : "validation";
}

Split split_from_name(const std::string& name) {
  if (name == "train") return Split::kTrain;
  if (name == "validation") return Split::kValidation;
  throw InputError(concat("unknown data split '", name, "'; valid splits: train, validation"));
}

std::int64_t validation_document_count(std::int64_t documents, double fraction) {
  require(std::isfinite(fraction) && fraction >= 0.0 && fraction < 1.0, "--validation-fraction ",
          fraction, " must lie in [0, 1)");
  if (fraction == 0.0) return 0;
  require(documents >= 2, "--validation-fraction ", fraction, " needs at least 2 documents, the ",
          "corpus has ", documents, "; use --validation-fraction 0");
  const auto k = static_cast<std::int64_t>(std::llround(fraction * static_cast<double>(documents)));
  return std::clamp<std::int64_t>(k, 1, documents - 1);
}

std::vector<std::int64_t> split_documents_of(std::int64_t documents, double fraction, Split split) {
  const std::int64_t k = validation_document_count(documents, fraction);
  const KeyedPermutation order(static_cast<std::uint64_t>(documents), 0, "data.split", 0);
  std::vector<bool> held_out(static_cast<std::size_t>(documents), false);
  for (std::int64_t i = 0; i < k; ++i) held_out[order(static_cast<std::uint64_t>(i))] = true;
  std::vector<std::int64_t> chosen;
  chosen.reserve(static_cast<std::size_t>(split == Split::kTrain ? documents - k : k));
  for (std::int64_t d = 0; d < documents; ++d)
    if (held_out[static_cast<std::size_t>(d)] == (split == Split::kValidation)) chosen.push_back(d);
  return chosen;
}

}  // namespace metamorph::data
