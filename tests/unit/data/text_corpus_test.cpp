// Document rules, UTF-8 checks and input file selection of `data prepare`.
#include <gtest/gtest.h>

#include <filesystem>

#include "runtime/core/error.hpp"
#include "runtime/data/text_corpus.hpp"
#include "runtime/data/utf8.hpp"
#include "tests/support/test_support.hpp"

namespace metamorph::data {
namespace {

using Docs = std::vector<std::string>;

TEST(TextCorpus, FortuneFilesSplitAtPercentLines) {
  const std::string text =
      "A short fortune.\n%\n  ascii\n  art\n\nwith a gap\n%\n\n%\nLast, no trailing percent\n";
  EXPECT_EQ(split_documents(text), (Docs{"A short fortune.", "  ascii\n  art\n\nwith a gap",
                                         "Last, no trailing percent"}));
  // A "%" inside a line, or with spaces, is not a separator.
  EXPECT_EQ(split_documents("50% off\n%\n % \n"), (Docs{"50% off", " % "}));
}

TEST(TextCorpus, OtherFilesSplitAtBlankLines) {
  EXPECT_EQ(split_documents("one\nparagraph\n\n \t\nsecond\r\nparagraph\r\n\n\n"),
            (Docs{"one\nparagraph", "second\nparagraph"}));
  EXPECT_EQ(split_documents("\xEF\xBB\xBFno blank lines\nso one document"),
            (Docs{"no blank lines\nso one document"}));
  EXPECT_EQ(split_documents(" \n\n\t\n"), Docs{});
  EXPECT_EQ(split_documents(""), Docs{});
}

TEST(TextCorpus, Utf8ProblemsAreLocated) {
  EXPECT_FALSE(find_text_problem("plain \xC3\xA9 \xE2\x88\x91 \xF0\x9F\x98\x80").has_value());
  const auto at = [](std::string_view bytes) {
    const auto problem = find_text_problem(bytes);
    return problem ? static_cast<long>(problem->offset) : -1L;
  };
  EXPECT_EQ(at("abc\xFF"), 3);
  EXPECT_EQ(at("ab\xC3"), 2);            // truncated sequence
  EXPECT_EQ(at("a\xC0\xAF"), 1);         // overlong '/'
  EXPECT_EQ(at("ab\xED\xA0\x80"), 2);    // UTF-16 surrogate
  EXPECT_EQ(at("\xF4\x90\x80\x80"), 0);  // past U+10FFFF
  EXPECT_EQ(at("x\xE2\x28\xA1"), 1);     // bad continuation
  const auto nul = find_text_problem(std::string_view("ab\0c", 4));
  ASSERT_TRUE(nul.has_value());
  EXPECT_EQ(nul->offset, 2u);
  EXPECT_NE(nul->what.find("NUL"), std::string::npos);
}

TEST(TextCorpus, DirectoriesAreReadRecursivelyInOrderWithoutStrfileIndexes) {
  namespace fs = std::filesystem;
  test::TempDir dir;
  fs::create_directories(dir / "in" / "sub");
  test::write_file(dir / "in" / "b", "b\n%\n");
  test::write_file(dir / "in" / "b.dat", std::string("\0\0\0\2", 4));
  fs::create_symlink("b", dir / "in" / "b.u8");
  test::write_file(dir / "in" / "a.txt", "a");
  test::write_file(dir / "in" / "sub" / "c.txt", "c");
  test::write_file(dir / "in" / "lonely.dat", "a .dat without its text file is kept");
  const auto files = collect_input_files(dir / "in");
  std::vector<std::string> names;
  for (const auto& f : files) names.push_back(fs::relative(f, dir / "in").string());
  EXPECT_EQ(names, (std::vector<std::string>{"a.txt", "b", "lonely.dat", "sub/c.txt"}));

  EXPECT_THROW(collect_input_files(dir / "absent"), InputError);
  fs::create_directories(dir / "empty" / "nested");
  EXPECT_THROW(collect_input_files(dir / "empty"), InputError);

  test::write_file(dir / "bad.txt", "fine\nfine\n\xFF");
  try {
    read_text_file(dir / "bad.txt");
    ADD_FAILURE() << "invalid UTF-8 must be reported";
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("bad.txt"), std::string::npos) << message;
    EXPECT_NE(message.find("byte offset 10"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace metamorph::data
