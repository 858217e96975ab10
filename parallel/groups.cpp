#include "parallel/groups.hpp"

#include "runtime/core/error.hpp"

namespace metamorph {

ParallelGroups::ParallelGroups(std::unique_ptr<Communicator> world, const Layout& layout)
    : world_(std::move(world)),
      topology_(layout, world_->size()),
      coordinates_(topology_.coordinates(world_->rank())) {
  // Every rank creates its groups in the same kind order, so creations cannot deadlock.
  for (GroupKind kind : kAllGroupKinds)
    groups_.push_back(world_->subgroup(topology_.group(kind, world_->rank()), group_name(kind)));
}

Communicator& ParallelGroups::group(GroupKind kind) {
  const auto i = static_cast<std::size_t>(kind);
  MM_ASSERT(i < groups_.size(), "group ", group_name(kind));
  return *groups_[i];
}

}  // namespace metamorph
