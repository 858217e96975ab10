#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "runtime/core/error.hpp"
#include "runtime/log/metrics_writer.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph {
namespace {

std::vector<nlohmann::json> read_lines(const std::filesystem::path& path) {
  std::istringstream in(test::read_file(path));
  std::vector<nlohmann::json> records;
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  return records;
}

TEST(MetricsWriter, OneParsableObjectPerLineInNewDirectories) {
  test::TempDir dir;
  const auto path = dir / "runs/a/metrics.jsonl";
  MetricsWriter writer(path);
  for (int step = 1; step <= 3; ++step) {
    writer.write({{"step", step}, {"loss", 3.0 / step}, {"tokens", step * 4096}});
    // Flushed as written: the file is complete before the writer closes.
    EXPECT_EQ(read_lines(path).size(), static_cast<std::size_t>(step));
  }
  const auto records = read_lines(path);
  EXPECT_EQ(records[1]["step"], 2);
  EXPECT_DOUBLE_EQ(records[2]["loss"].get<double>(), 1.0);
  EXPECT_EQ(records[2]["tokens"], 3 * 4096);
  EXPECT_EQ(writer.lines_written(), 3);
}

TEST(MetricsWriter, AppendKeepsOldLinesAndFreshStartDropsThem) {
  test::TempDir dir;
  const auto path = dir / "m.jsonl";
  MetricsWriter(path).write({{"step", 1}});
  MetricsWriter(path, /*append=*/true).write({{"step", 2}});
  EXPECT_EQ(read_lines(path).size(), 2u);
  MetricsWriter(path).write({{"step", 9}});
  const auto records = read_lines(path);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["step"], 9);
}

TEST(MetricsWriter, NonFiniteValuesBecomeNullNotBrokenJson) {
  test::TempDir dir;
  MetricsWriter writer(dir / "m.jsonl");
  writer.write({{"loss", std::nan("")}, {"grad_norm", INFINITY}});
  const auto records = read_lines(dir / "m.jsonl");
  EXPECT_TRUE(records[0]["loss"].is_null());
  EXPECT_TRUE(records[0]["grad_norm"].is_null());
}

TEST(MetricsWriter, UnwritablePathIsAnInputErrorNamingIt) {
  test::TempDir dir;
  test::write_file(dir / "file", "x");
  try {
    MetricsWriter writer(dir / "file/sub/m.jsonl");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("file/sub"), std::string::npos) << e.what();
  }
  MetricsWriter writer(dir / "ok.jsonl");
  EXPECT_THROW(writer.write(nlohmann::json::array({1, 2})), std::logic_error);
}

}  // namespace
}  // namespace metamorph
