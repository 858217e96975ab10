#include <gtest/gtest.h>

#include <csignal>
#include <stdexcept>

#include "runtime/checkpoint/save_signal.hpp"

namespace metamorph::test {
namespace {

int g_previous_handler_calls = 0;
extern "C" void count_call(int) {
  ++g_previous_handler_calls;
}

TEST(SaveSignal, SigtermAndSigusr1SetTheFlagInsteadOfKilling) {
  SaveSignalGuard guard;
  EXPECT_EQ(guard.requested(), 0);
  std::raise(SIGUSR1);
  EXPECT_EQ(guard.requested(), SIGUSR1);
  guard.clear();
  EXPECT_EQ(guard.requested(), 0);
  std::raise(SIGTERM);  // would end the test binary without the guard
  EXPECT_EQ(guard.requested(), SIGTERM);
}

TEST(SaveSignal, OnlyOneGuardAndThePreviousHandlerComesBack) {
  std::signal(SIGUSR1, count_call);
  {
    SaveSignalGuard guard({SIGUSR1});
    EXPECT_THROW(SaveSignalGuard second({SIGUSR1}), std::logic_error);
    std::raise(SIGUSR1);
    EXPECT_EQ(g_previous_handler_calls, 0);
  }
  std::raise(SIGUSR1);
  EXPECT_EQ(g_previous_handler_calls, 1);
  std::signal(SIGUSR1, SIG_DFL);
}

}  // namespace
}  // namespace metamorph::test
