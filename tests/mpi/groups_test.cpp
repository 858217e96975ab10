// Group communicators built from the topology: membership, ranks and a reduction over each.
#include <gtest/gtest.h>

#include "parallel/groups.hpp"
#include "runtime/core/error.hpp"
#include "tests/mpi/mpi_fixture.hpp"

namespace metamorph::test {
namespace {

using GroupsTest = MpiTest;

std::vector<Layout> layouts_for(int world) {
  switch (world) {
    case 8:
      return {{.tp = 2, .pp = 2, .dp = 2},
              {.tp = 2, .pp = 1, .dp = 4, .ep = 2},
              {.tp = 2, .pp = 1, .dp = 4, .ep = 2, .etp = 1}};
    case 4:
      return {{.tp = 2, .pp = 1, .dp = 2, .ep = 2}, {.tp = 1, .pp = 2, .dp = 2}};
    case 2:
      return {{.tp = 2, .pp = 1, .dp = 1}, {.tp = 1, .pp = 1, .dp = 2, .ep = 2}};
    default:
      return {{.tp = 1, .pp = 1, .dp = world}};
  }
}

TEST_F(GroupsTest, EveryGroupHoldsItsTopologyMembersInOrder) {
  const int me = world->rank();
  for (const Layout& layout : layouts_for(world->size())) {
    ParallelGroups groups(MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", test_mpi_options()),
                          layout);
    for (GroupKind kind : kAllGroupKinds) {
      const std::vector<int> members = groups.topology().group(kind, me);
      Communicator& comm = groups.group(kind);
      SCOPED_TRACE(layout.describe() + " " + group_name(kind));
      EXPECT_EQ(comm.name(), group_name(kind));
      ASSERT_EQ(comm.size(), static_cast<int>(members.size()));
      EXPECT_EQ(members[static_cast<std::size_t>(comm.rank())], me);
      // Gathering world ranks over the group must give exactly the member list.
      Tensor mine = Tensor::empty({1}, DType::i32, arena);
      mine.data<std::int32_t>()[0] = me;
      Tensor all = Tensor::empty({comm.size()}, DType::i32, arena);
      comm.all_gather(mine, all);
      for (int i = 0; i < comm.size(); ++i)
        EXPECT_EQ(all.data<std::int32_t>()[i], members[static_cast<std::size_t>(i)]);
    }
    EXPECT_EQ(groups.coordinates().tp, groups.tp().rank());
    EXPECT_EQ(groups.coordinates().dp, groups.dp().rank());
    EXPECT_EQ(groups.coordinates().pp, groups.pp().rank());
    EXPECT_EQ(groups.coordinates().ep, groups.ep().rank());
    EXPECT_EQ(groups.coordinates().edp, groups.expert_dp().rank());
  }
}

TEST_F(GroupsTest, WrongLayoutIsAnInputErrorBeforeAnyCommunication) {
  const int p = world->size();
  try {
    ParallelGroups groups(MpiCommunicator::duplicate(MPI_COMM_WORLD, "world", test_mpi_options()),
                          Layout{.tp = 3, .pp = 1, .dp = p});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("world has " + std::to_string(p)), std::string::npos)
        << e.what();
  }
  world->barrier();  // every rank is still in step
}

}  // namespace
}  // namespace metamorph::test
