#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include "runtime/log/progress.hpp"

namespace metamorph {
namespace {

struct FakeClock {
  double now = 100.0;
  ProgressLine::Clock fn() {
    return [this] { return now; };
  }
};

Logger make_logger(std::ostringstream& out, int rank, bool terminal) {
  return Logger(
      LogOptions{.rank = rank, .out = &out, .err = &out, .out_is_terminal = terminal ? 1 : 0});
}

int count_lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

TEST(ProgressFormat, FieldsPercentElapsedAndEta) {
  std::ostringstream out;
  const Logger log = make_logger(out, 0, false);
  FakeClock clock;
  ProgressLine progress(log, "train", 1000, {}, clock.fn());
  // 120 of 1000 in 60 s: 0.5 s per unit, 880 left -> 440 s.
  EXPECT_EQ(progress.format(120, {{"loss", fixed(2.31, 4)}, {"tok/s", si(12345)}}, 60.0),
            "train 120/1000 (12.0%) loss 2.3100 tok/s 12.3k elapsed 1m00s eta 7m20s");
  EXPECT_EQ(progress.format(0, {}, 0.0), "train 0/1000 (0.0%) elapsed 0s eta ?");
  EXPECT_EQ(progress.format(1000, {}, 3725.0), "train 1000/1000 (100.0%) elapsed 1h02m05s");
  ProgressLine open_ended(log, "tokenise", 0, {}, clock.fn());
  EXPECT_EQ(open_ended.format(42, {}, 5.0), "tokenise 42 elapsed 5s");
  progress.finish();
  open_ended.finish();
}

TEST(ProgressFormat, HumanNumbers) {
  EXPECT_EQ(si(999), "999");
  EXPECT_EQ(si(1500), "1.5k");
  EXPECT_EQ(si(2.5e9), "2.5G");
  EXPECT_EQ(si(0.25), "0.2");
  EXPECT_EQ(scientific(0.0014367, 2), "1.44e-03");
  EXPECT_EQ(scientific(3e-4, 2), "3.00e-04");
  EXPECT_EQ(duration(59.4), "59s");
  EXPECT_EQ(duration(-1), "?");
}

TEST(ProgressLine, NotATerminalPrintsWholeLinesAtMostOncePerInterval) {
  std::ostringstream out;
  const Logger log = make_logger(out, 0, false);
  FakeClock clock;
  {
    ProgressLine progress(log, "train", 10, ProgressOptions{.line_interval_s = 30.0}, clock.fn());
    for (int step = 1; step <= 10; ++step) {
      clock.now += 10.0;  // 10 s per step: a line at steps 1, 4, 7, 10
      progress.update(step, {{"loss", fixed(1.0 / step, 2)}});
    }
    progress.finish({{"loss", "0.10"}});
  }
  const std::string s = out.str();
  EXPECT_EQ(s.find('\r'), std::string::npos);
  EXPECT_EQ(count_lines(s), 5) << s;  // 4 periodic lines + the final one
  EXPECT_NE(s.find("[rank 0] train 1/10 (10.0%) loss 1.00 elapsed 10s eta 1m30s\n"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find("[rank 0] train 4/10"), std::string::npos) << s;
  EXPECT_EQ(s.find("train 5/10"), std::string::npos) << s;
  EXPECT_NE(s.find("[rank 0] train 10/10 (100.0%) loss 0.10 elapsed 1m40s\n"), std::string::npos)
      << s;
}

TEST(ProgressLine, NotATerminalCanPrintEveryKthUpdate) {
  std::ostringstream out;
  const Logger log = make_logger(out, 0, false);
  FakeClock clock;
  ProgressLine progress(log, "data", 100, ProgressOptions{.line_interval_s = 1e9, .line_every = 25},
                        clock.fn());
  for (int i = 1; i <= 100; ++i) progress.update(i);
  progress.finish();
  // The first update, every 25th, and the final line.
  EXPECT_EQ(count_lines(out.str()), 1 + 4 + 1) << out.str();
}

TEST(ProgressLine, TerminalRewritesOneLine) {
  std::ostringstream out;
  const Logger log = make_logger(out, 0, true);
  FakeClock clock;
  ProgressLine progress(log, "train", 3, {}, clock.fn());
  clock.now += 1;
  progress.update(1, {{"loss", "2.000000"}});
  clock.now += 1;
  progress.update(2, {{"loss", "1.5"}});
  clock.now += 1;
  progress.finish();
  const std::string s = out.str();
  EXPECT_EQ(count_lines(s), 1) << s;  // only the final newline
  EXPECT_EQ(std::count(s.begin(), s.end(), '\r'), 3) << s;
  // The shorter second report is padded over the first one's tail.
  const std::string first = "\r[rank 0] train 1/3 (33.3%) loss 2.000000 elapsed 1s eta 2s";
  const std::string second = "\r[rank 0] train 2/3 (66.7%) loss 1.5 elapsed 2s eta 1s";
  EXPECT_EQ(s.substr(0, first.size()), first);
  EXPECT_EQ(s.substr(first.size(), first.size()),
            second + std::string(first.size() - second.size(), ' '));
  EXPECT_EQ(s.back(), '\n');
}

TEST(ProgressLine, TerminalRedrawsAreThrottled) {
  std::ostringstream out;
  const Logger log = make_logger(out, 0, true);
  FakeClock clock;
  ProgressLine progress(log, "x", 1000, ProgressOptions{.redraw_interval_s = 1.0}, clock.fn());
  for (int i = 1; i <= 1000; ++i) {
    clock.now += 0.01;  // 10 s in all: about 10 redraws plus the last update
    progress.update(i);
  }
  const std::string s = out.str();
  const auto redraws = std::count(s.begin(), s.end(), '\r');
  EXPECT_GE(redraws, 9);
  EXPECT_LE(redraws, 12);
  progress.finish();
}

TEST(ProgressLine, QuietRanksPrintNothing) {
  std::ostringstream out;
  const Logger log = make_logger(out, 2, false);
  FakeClock clock;
  {
    ProgressLine progress(log, "train", 10, ProgressOptions{.line_every = 1}, clock.fn());
    for (int i = 1; i <= 10; ++i) progress.update(i);
  }
  EXPECT_EQ(out.str(), "");
}

}  // namespace
}  // namespace metamorph
