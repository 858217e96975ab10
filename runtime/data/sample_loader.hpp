#pragma once
// Training samples of seq + 1 tokens (inputs and shifted targets) from an indexed dataset, in a
// seeded order that depends only on the global sample index, so every data-parallel layout sees
// the same global batches and a saved position resumes the exact continuation.
//
// Samples of one split (document_split.hpp), by mode:
//   pack: the split's documents back to back form one stream, cut into windows starting every
//         seq tokens (consecutive windows share one token, as in Megatron's GPT dataset);
//   pad:  each document is cut the same way on its own; a last window shorter than seq + 1 is
//         filled up with the pad id (documents of one token give no sample);
//   drop: like pad, but short last windows are dropped.
// Order: global sample g lies in epoch e = g / N (N samples per epoch) and is sample
// P_e(g mod N) of the split, P_e a KeyedPermutation keyed by (seed, "data.order", e); without
// shuffle, P_e is the identity. A global batch of B samples starting at consumed sample c holds
// g = c .. c + B - 1; DP rank r of R takes the contiguous slice [c + r*B/R, c + (r+1)*B/R).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "runtime/data/document_split.hpp"
#include "runtime/data/indexed_dataset.hpp"

namespace metamorph::data {

enum class SampleMode { kPack, kPad, kDrop };
std::string sample_mode_name(SampleMode mode);
// "pack", "pad" or "drop"; InputError otherwise.
SampleMode sample_mode_from_name(const std::string& name);

struct LoaderOptions {
  std::int64_t seq = 0;  // tokens a sample predicts; samples hold seq + 1
  std::uint64_t seed = 0;
  Split split = Split::kTrain;
  SampleMode mode = SampleMode::kPack;
  // Share of documents held out (document_split.hpp). Unset: the value `data prepare` recorded
  // in PREFIX.data.json (0 without one), so train and validation never overlap by accident.
  std::optional<double> validation_fraction;
  bool shuffle = true;
  std::optional<std::int32_t> pad_id;  // required by SampleMode::kPad
};

class SampleLoader {
 public:
  // Keeps a reference to `dataset`, which must outlive the loader. InputError when the split
  // holds no sample of seq + 1 tokens or an option is out of range.
  SampleLoader(const IndexedDataset& dataset, LoaderOptions options);

  // Fills tokens_out[global_batch / dp_size][seq + 1] with this rank's slice of the next global
  // batch and advances past the whole global batch. Every rank calls it with the same sizes.
  void next_batch(std::int64_t global_batch, int dp_rank, int dp_size, std::int32_t* tokens_out);

  // Global sample g of the run (any epoch) into out[seq + 1]; does not move the position.
  void sample(std::int64_t global_index, std::int32_t* out) const;

  std::int64_t samples_per_epoch() const { return samples_per_epoch_; }
  std::int64_t consumed_samples() const { return consumed_; }
  const LoaderOptions& options() const { return options_; }

  // {"consumed_samples", "seed", "seq", "split", "mode", "shuffle", "samples_per_epoch",
  //  "validation_fraction"}: restore() accepts only a position taken with the same data and
  // options, so a resumed run cannot silently read a different order.
  nlohmann::json position() const;
  void restore(const nlohmann::json& position);

 private:
  void read_split_sample(std::int64_t index, std::int32_t* out) const;
  const IndexedDataset& dataset_;
  LoaderOptions options_;
  std::vector<std::int64_t> documents_;  // of the split, ascending
  // pack: tokens before each document of the split; pad/drop: samples before it. One extra
  // entry holds the total.
  std::vector<std::int64_t> prefix_;
  std::int64_t samples_per_epoch_ = 0;
  std::int64_t consumed_ = 0;
};

}  // namespace metamorph::data
