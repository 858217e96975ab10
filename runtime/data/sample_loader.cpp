#include "runtime/data/sample_loader.hpp"

#include <algorithm>

#include "runtime/core/error.hpp"
#include "runtime/data/data_manifest.hpp"
#include "runtime/data/keyed_permutation.hpp"

namespace metamorph::data {

std::string sample_mode_name(SampleMode mode) {
  switch (mode) {
    case SampleMode::kPack:
      return "pack";
    case SampleMode::kPad:
      return "pad";
    case SampleMode::kDrop:
      return "drop";
  }
  return "unknown";
}

SampleMode sample_mode_from_name(const std::string& name) {
  if (name == "pack") return SampleMode::kPack;
  if (name == "pad") return SampleMode::kPad;
  if (name == "drop") return SampleMode::kDrop;
  throw InputError(concat("unknown sample mode '", name, "'; valid modes: pack, pad, drop"));
}

namespace {

// Windows of seq + 1 tokens every seq tokens within one document of `length` tokens.
std::int64_t windows_in_document(std::int64_t length, std::int64_t seq, SampleMode mode) {
  if (mode == SampleMode::kPad) return length >= 2 ? (length - 2) / seq + 1 : 0;
  return length >= 1 ? (length - 1) / seq : 0;
}

}  // namespace

SampleLoader::SampleLoader(const IndexedDataset& dataset, LoaderOptions options)
    : dataset_(dataset), options_(options) {
  require(options_.seq >= 1 && options_.seq < (std::int64_t{1} << 30), "--seq ", options_.seq,
          " must be a positive number of tokens");
  if (options_.mode == SampleMode::kPad) {
    require(options_.pad_id.has_value() && *options_.pad_id >= 0,
            "sample mode 'pad' needs the tokenizer's pad id");
  }
  if (!options_.validation_fraction)
    options_.validation_fraction = recorded_validation_fraction(dataset.prefix());
  documents_ =
      split_documents_of(dataset.num_documents(), *options_.validation_fraction, options_.split);
  prefix_.reserve(documents_.size() + 1);
  prefix_.push_back(0);
  for (const std::int64_t d : documents_) {
    const std::int64_t length = dataset.document_length(d);
    const std::int64_t units = options_.mode == SampleMode::kPack
                                   ? length
                                   : windows_in_document(length, options_.seq, options_.mode);
    prefix_.push_back(prefix_.back() + units);
  }
  if (options_.mode == SampleMode::kPack) {
    const std::int64_t tokens = prefix_.back();
    samples_per_epoch_ = tokens >= options_.seq + 1 ? (tokens - 1) / options_.seq : 0;
  } else {
    samples_per_epoch_ = prefix_.back();
  }
  require(samples_per_epoch_ > 0, "the ", split_name(options_.split), " split of ",
          dataset.prefix(), " (", documents_.size(),
          " documents) holds no sample of seq + 1 = ", options_.seq + 1, " tokens in mode '",
          sample_mode_name(options_.mode), "'; use a smaller --seq",
          options_.mode == SampleMode::kPack ? "" : " or mode 'pack'", " or more data");
}

void SampleLoader::read_split_sample(std::int64_t index, std::int32_t* out) const {
  const std::int64_t want = options_.seq + 1;
  if (options_.mode == SampleMode::kPack) {
    std::int64_t at = index * options_.seq;  // offset in the split's token stream
    auto j = static_cast<std::size_t>(std::upper_bound(prefix_.begin(), prefix_.end(), at) -
                                      prefix_.begin() - 1);
    std::int64_t filled = 0;
    while (filled < want) {
      MM_ASSERT(j < documents_.size());
      const std::int64_t within = at - prefix_[j];
      const std::int64_t take = std::min(prefix_[j + 1] - at, want - filled);
      dataset_.read_tokens(dataset_.document_first_token(documents_[j]) + within, take,
                           out + filled);
      filled += take;
      at += take;
      ++j;
    }
    return;
  }
  const auto j = static_cast<std::size_t>(std::upper_bound(prefix_.begin(), prefix_.end(), index) -
                                          prefix_.begin() - 1);
  const std::int64_t document = documents_[j];
  const std::int64_t start = (index - prefix_[j]) * options_.seq;
  const std::int64_t take = std::min(want, dataset_.document_length(document) - start);
  dataset_.read_tokens(dataset_.document_first_token(document) + start, take, out);
  std::fill(out + take, out + want, options_.pad_id.value_or(0));
}

void SampleLoader::sample(std::int64_t global_index, std::int32_t* out) const {
  MM_ASSERT(global_index >= 0);
  const std::int64_t epoch = global_index / samples_per_epoch_;
  const std::int64_t within = global_index % samples_per_epoch_;
  std::int64_t index = within;
  if (options_.shuffle) {
    const KeyedPermutation order(static_cast<std::uint64_t>(samples_per_epoch_), options_.seed,
                                 "data.order", static_cast<std::uint64_t>(epoch));
    index = static_cast<std::int64_t>(order(static_cast<std::uint64_t>(within)));
  }
  read_split_sample(index, out);
}

void SampleLoader::next_batch(std::int64_t global_batch, int dp_rank, int dp_size,
                              std::int32_t* tokens_out) {
  require(global_batch >= 1, "--global-batch ", global_batch, " must be positive");
  require(dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size, "data-parallel rank ", dp_rank,
          " is outside [0, ", dp_size, ")");
  require(global_batch % dp_size == 0, "--global-batch ", global_batch,
          " must be a multiple of the data-parallel size ", dp_size);
  const std::int64_t local = global_batch / dp_size;
  const std::int64_t first = consumed_ + dp_rank * local;
  for (std::int64_t i = 0; i < local; ++i) sample(first + i, tokens_out + i * (options_.seq + 1));
  consumed_ += global_batch;
}

nlohmann::json SampleLoader::position() const {
  return {{"consumed_samples", consumed_},
          {"seed", options_.seed},
          {"seq", options_.seq},
          {"split", split_name(options_.split)},
          {"mode", sample_mode_name(options_.mode)},
          {"shuffle", options_.shuffle},
          {"validation_fraction", *options_.validation_fraction},
          {"samples_per_epoch", samples_per_epoch_},
          {"dataset_tokens", dataset_.num_tokens()}};
}

void SampleLoader::restore(const nlohmann::json& saved) {
  const nlohmann::json mine = position();
  require(saved.is_object(), "a saved data position must be a JSON object, got ",
          saved.type_name());
  // Options first: a mismatch there explains any difference in the derived counts.
  for (const char* key : {"seed", "seq", "split", "mode", "shuffle", "validation_fraction",
                          "dataset_tokens", "samples_per_epoch"}) {
    require(saved.contains(key), "the saved data position lacks \"", key, "\"");
    require(saved[key] == mine[key], "the saved data position has ", key, " = ", saved[key].dump(),
            " but this run has ", mine[key].dump(), "; resume with the same data and options");
  }
  require(saved.contains("consumed_samples") && saved["consumed_samples"].is_number_integer() &&
              saved["consumed_samples"].get<std::int64_t>() >= 0,
          "the saved data position needs a non-negative integer \"consumed_samples\"");
  consumed_ = saved["consumed_samples"].get<std::int64_t>();
}

}  // namespace metamorph::data
