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

TEST(Cli, TrainRejectsExpertLayoutsThatCannotWork) {
  TempDir dir;
  write_file(dir / "moe.json", R"({"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
    "num_experts": 4, "num_experts_per_tok": 2})");
  const std::vector<std::string> base = {"train",
                                         "--model",
                                         (dir / "moe.json").string(),
                                         "--data",
                                         (dir / "absent").string(),
                                         "--steps",
                                         "1",
                                         "--seq",
                                         "8"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
  };
  auto r = with({"--ep", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--ep 2 must divide --dp 1"), std::string::npos) << r.err;
  r = with({"--etp", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--etp 2 x --ep 1 = 2 must divide tp x dp = 1"), std::string::npos) << r.err;
  r = with({"--ep", "0"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--ep must be >= 1"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace metamorph::test
