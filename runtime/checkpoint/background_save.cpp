#include "runtime/checkpoint/background_save.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

BackgroundSave::BackgroundSave(const std::filesystem::path& root, ParameterSet params,
                               const CheckpointState& state, const RankContext& context,
                               const SaveOptions& options)
    : params_(std::move(params)),
      context_(context),
      options_(options),
      save_(checkpoint::begin_save(root, state, context, options)) {
  for (const auto& p : params_.all())
    require(p.value.device() == Device::cpu, "background checkpoint save: ", p.name,
            " is not a host tensor (download it first: the thread must own a snapshot)");
  writer_ = std::thread([this] {
    error_ = checkpoint::write_rank_shards(
        save_,
        [this] {
          return checkpoint::parameter_shard_views(params_, context_, options_.with_optimizer);
        },
        context_, options_);
    written_.store(true, std::memory_order_release);
  });
}

BackgroundSave::~BackgroundSave() {
  if (writer_.joinable()) writer_.join();
}

std::filesystem::path BackgroundSave::finish() {
  MM_ASSERT(writer_.joinable(), "BackgroundSave::finish called twice");
  writer_.join();
  return checkpoint::end_save(save_, error_, context_, options_);
}

}  // namespace metamorph
