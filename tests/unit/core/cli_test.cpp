#include <gtest/gtest.h>

#include "tests/support/test_support.hpp"

namespace metamorph::test {
namespace {

TEST(Cli, HelpListsEveryCommand) {
  const auto r = run_cli({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* name :
       {"plan", "train", "eval", "grow", "upcycle", "generate", "data", "ckpt", "bench", "version"})
    EXPECT_NE(r.out.find(std::string("  ") + name), std::string::npos) << name;
}

TEST(Cli, UnknownCommandIsOneLineAndExitTwo) {
  const auto r = run_cli({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos);
  EXPECT_NE(r.err.find("valid commands"), std::string::npos);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

TEST(Cli, NoArgumentsPrintsUsageAndExitsTwo) {
  const auto r = run_cli({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("usage"), std::string::npos);
}

TEST(Cli, VersionRuns) {
  const auto r = run_cli({"version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("metamorph "), std::string::npos);
  EXPECT_NE(r.out.find("backends: cpu"), std::string::npos);
}

TEST(Cli, UnknownOptionNamesItAndTheHelp) {
  const auto r = run_cli({"version", "--bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--bogus"), std::string::npos);
  EXPECT_NE(r.err.find("metamorph version --help"), std::string::npos);
}

TEST(Cli, MissingOrBrokenConfigFileIsAnInputError) {
  TempDir dir;
  auto r = run_cli({"version", "--config", (dir / "absent.json").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("absent.json"), std::string::npos);
  write_file(dir / "bad.json", "{not json");
  r = run_cli({"version", "--config", (dir / "bad.json").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not valid JSON"), std::string::npos);
  write_file(dir / "list.json", "[1, 2]");
  r = run_cli({"version", "--config", (dir / "list.json").string()});
  EXPECT_EQ(r.exit_code, 2);
}

}  // namespace
}  // namespace metamorph::test
