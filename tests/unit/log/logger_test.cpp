#include <gtest/gtest.h>

#include <sstream>
#include <thread>

#include "runtime/log/log.hpp"

namespace metamorph {
namespace {

struct Captured {
  std::ostringstream out, err;
  Logger make(int rank, bool all_ranks = false, bool debug = false) {
    return Logger(LogOptions{.rank = rank,
                             .all_ranks = all_ranks,
                             .debug = debug,
                             .out = &out,
                             .err = &err,
                             .out_is_terminal = 0});
  }
};

TEST(Logger, EveryLineCarriesTheRank) {
  Captured c;
  const Logger log = c.make(0);
  log.info("starting");
  log.warn("slow disk");
  log.error("bad thing");
  EXPECT_EQ(c.out.str(), "[rank 0] starting\n");
  EXPECT_EQ(c.err.str(), "[rank 0] warning: slow disk\n[rank 0] error: bad thing\n");
}

TEST(Logger, OnlyRankZeroPrintsInfoButEveryRankWarns) {
  Captured c;
  const Logger log = c.make(3);
  log.info("hidden");
  log.debug("hidden too");
  log.warn("visible");
  EXPECT_EQ(c.out.str(), "");
  EXPECT_EQ(c.err.str(), "[rank 3] warning: visible\n");
  EXPECT_FALSE(log.prints_progress());

  Captured all;
  const Logger loud = all.make(3, /*all_ranks=*/true);
  loud.info("shown");
  EXPECT_EQ(all.out.str(), "[rank 3] shown\n");
}

TEST(Logger, DebugLinesOnlyWhenAskedFor) {
  Captured quiet, verbose;
  quiet.make(0).debug("x");
  verbose.make(0, false, /*debug=*/true).debug("x");
  EXPECT_EQ(quiet.out.str(), "");
  EXPECT_EQ(verbose.out.str(), "[rank 0] debug: x\n");
}

TEST(Logger, ALineAfterAnOpenProgressLineStartsOnAFreshLine) {
  std::ostringstream out, err;
  const Logger log(LogOptions{.out = &out, .err = &err, .out_is_terminal = 1});
  log.write_progress("\r[rank 0] step 1/2", true);
  log.info("checkpoint saved");
  EXPECT_EQ(out.str(), "\r[rank 0] step 1/2\n[rank 0] checkpoint saved\n");
}

TEST(Logger, CopiesSharedAcrossThreadsWriteWholeLines) {
  std::ostringstream out, err;
  const Logger log(LogOptions{.out = &out, .err = &err, .out_is_terminal = 0});
  const auto writer = [](Logger copy, char c) {
    for (int i = 0; i < 200; ++i) copy.info(std::string(40, c));
  };
  std::thread a(writer, log, 'a'), b(writer, log, 'b');
  a.join();
  b.join();
  std::istringstream lines(out.str());
  int count = 0;
  for (std::string line; std::getline(lines, line); ++count)
    EXPECT_TRUE(line == "[rank 0] " + std::string(40, 'a') ||
                line == "[rank 0] " + std::string(40, 'b'))
        << line;
  EXPECT_EQ(count, 400);
}

}  // namespace
}  // namespace metamorph
