#pragma once
// Train/validation split by whole documents, so no text is seen on both sides. The validation
// documents are the first k = round(fraction * D) images of a permutation of [0, D) keyed by the
// fixed purpose "data.split" (not by the run's seed: the split stays put when the seed changes);
// with fraction > 0, k is at least 1 and at most D - 1.
#include <cstdint>
#include <string>
#include <vector>

namespace metamorph::data {

enum class Split { kTrain, kValidation };

std::string split_name(Split split);
// "train" or "validation"; InputError otherwise.
Split split_from_name(const std::string& name);

// k above; InputError when fraction is outside [0, 1) or a split would be empty.
std::int64_t validation_document_count(std::int64_t documents, double fraction);

// The documents of one side, ascending.
std::vector<std::int64_t> split_documents_of(std::int64_t documents, double fraction, Split split);

}  // namespace metamorph::data
