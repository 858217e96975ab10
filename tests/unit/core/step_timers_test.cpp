// StepTimers against a scripted clock (nesting, repeated names, order, misuse), TimedRegion,
// AttachedTimers and PausedTimers through a CPU backend, and the end-of-run report.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/step_timers.hpp"
#include "runtime/train/timer_report.hpp"

namespace metamorph {
namespace {

// Mark i happens at times[i] seconds.
class ScriptedClock final : public DeviceClock {
 public:
  explicit ScriptedClock(std::vector<double> times) : times_(std::move(times)) {}
  std::size_t mark() override { return used_++; }
  std::vector<double> collect() override {
    std::vector<double> out(times_.begin(), times_.begin() + static_cast<std::ptrdiff_t>(used_));
    times_.erase(times_.begin(), times_.begin() + static_cast<std::ptrdiff_t>(used_));
    used_ = 0;
    return out;
  }

 private:
  std::vector<double> times_;
  std::size_t used_ = 0;
};

using Sums = std::vector<std::pair<std::string, double>>;

TEST(StepTimers, NestedAndRepeatedRegionsSumPerNameInFirstEnteredOrder) {
  // step [0, 10]; attention [1, 3] and [6, 7]; mlp [3, 5] with nested experts [3.5, 4.5].
  StepTimers timers(
      std::make_unique<ScriptedClock>(std::vector<double>{0, 1, 3, 3, 3.5, 4.5, 5, 6, 7, 10}));
  timers.start("step");
  timers.start("attention");
  timers.stop("attention");
  timers.start("mlp");
  timers.start("experts");
  timers.stop("experts");
  timers.stop("mlp");
  timers.start("attention");
  timers.stop("attention");
  timers.stop("step");
  const Sums sums = timers.collect();
  const Sums expected = {{"step", 10.0}, {"attention", 3.0}, {"mlp", 2.0}, {"experts", 1.0}};
  ASSERT_EQ(sums.size(), expected.size());
  for (std::size_t i = 0; i < sums.size(); ++i) {
    EXPECT_EQ(sums[i].first, expected[i].first);
    EXPECT_DOUBLE_EQ(sums[i].second, expected[i].second) << sums[i].first;
  }
  EXPECT_TRUE(timers.collect().empty()) << "a collect starts the next step empty";
}

TEST(StepTimers, MisuseIsALogicError) {
  StepTimers timers(std::make_unique<ScriptedClock>(std::vector<double>(8, 0.0)));
  EXPECT_THROW(timers.stop("attention"), std::logic_error) << "nothing open";
  timers.start("step");
  timers.start("attention");
  EXPECT_THROW(timers.stop("step"), std::logic_error) << "not the innermost";
  EXPECT_THROW(timers.collect(), std::logic_error) << "collected while open";
}

TEST(StepTimers, RegionsReportOnlyToTheBackendsTimers) {
  Arena arena;
  CpuBackend backend(arena);
  { const TimedRegion untimed(backend, "ignored"); }  // no timers: nothing to do
  StepTimers timers(std::make_unique<HostClock>());
  {
    const AttachedTimers attached(backend, &timers);
    EXPECT_EQ(backend.timers(), &timers);
    const TimedRegion outer(backend, "outer");
    { const TimedRegion inner(backend, "inner"); }
  }
  EXPECT_EQ(backend.timers(), nullptr) << "taken back with the guard";
  {
    const AttachedTimers attached(backend, &timers);
    {
      // Validation between steps: not timed, the timers back afterwards.
      const PausedTimers paused(backend);
      EXPECT_EQ(backend.timers(), nullptr);
      const TimedRegion skipped(backend, "validation forward");
    }
    EXPECT_EQ(backend.timers(), &timers);
  }
  const Sums sums = timers.collect();
  ASSERT_EQ(sums.size(), 2u);
  EXPECT_EQ(sums[0].first, "outer");
  EXPECT_EQ(sums[1].first, "inner");
  EXPECT_GE(sums[1].second, 0.0);
  EXPECT_GE(sums[0].second, sums[1].second);
}

TEST(TimerReport, MeansPerStepAndSharesOfTheStep) {
  TimerReport report;
  EXPECT_TRUE(report.lines().empty());
  report.add_step({{"step", 2.0}, {"attention", 1.0}});
  report.add_step({{"step", 4.0}, {"attention", 2.0}, {"moe", 1.0}});
  EXPECT_EQ(report.steps(), 2);
  const Sums means = report.means();
  ASSERT_EQ(means.size(), 3u);
  EXPECT_DOUBLE_EQ(means[0].second, 3.0);
  EXPECT_DOUBLE_EQ(means[1].second, 1.5);
  EXPECT_DOUBLE_EQ(means[2].second, 0.5);
  const std::vector<std::string> lines = report.lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines[2].find("attention: 1500.00 ms (50.0%)"), std::string::npos) << lines[2];
  EXPECT_NE(lines[3].find("moe: 500.00 ms (16.7%)"), std::string::npos) << lines[3];
}

}  // namespace
}  // namespace metamorph
