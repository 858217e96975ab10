#pragma once
// Every communicator one rank needs for a layout, built from the world communicator.
#include <memory>

#include "parallel/communicator.hpp"
#include "parallel/layout.hpp"

namespace metamorph {

class ParallelGroups {
 public:
  // Validates the layout against world->size(), then creates one communicator per GroupKind
  // (named after it). Collective over the world: every rank must call it, with the same layout.
  ParallelGroups(std::unique_ptr<Communicator> world, const Layout& layout);

  const Topology& topology() const { return topology_; }
  const Coordinates& coordinates() const { return coordinates_; }
  Communicator& world() { return *world_; }
  Communicator& group(GroupKind kind);
  Communicator& tp() { return group(GroupKind::tp); }
  Communicator& dp() { return group(GroupKind::dp); }
  Communicator& pp() { return group(GroupKind::pp); }
  Communicator& ep() { return group(GroupKind::ep); }
  Communicator& expert_tp() { return group(GroupKind::expert_tp); }
  Communicator& expert_dp() { return group(GroupKind::expert_dp); }

 private:
  std::unique_ptr<Communicator> world_;
  Topology topology_;
  Coordinates coordinates_;
  std::vector<std::unique_ptr<Communicator>> groups_;  // indexed by GroupKind
};

}  // namespace metamorph
