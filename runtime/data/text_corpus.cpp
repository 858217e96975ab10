#include "runtime/data/text_corpus.hpp"

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "runtime/core/error.hpp"
#include "runtime/data/utf8.hpp"

namespace metamorph::data {

namespace fs = std::filesystem;

namespace {

bool is_strfile_index(const fs::path& file) {
  if (file.extension() != ".dat") return false;
  fs::path text = file;
  text.replace_extension();
  std::error_code ignored;
  return fs::is_regular_file(text, ignored);
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
}

std::string normalise_newlines(std::string_view text) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    out.push_back(text[i]);
  }
  return out;
}

std::vector<std::string_view> lines_of(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

void flush_document(std::vector<std::string_view>& lines, std::vector<std::string>& documents) {
  std::size_t first = 0, last = lines.size();
  while (first < last && is_blank(lines[first])) ++first;
  while (last > first && is_blank(lines[last - 1])) --last;
  if (first < last) {
    std::string document;
    for (std::size_t i = first; i < last; ++i) {
      if (i > first) document.push_back('\n');
      document.append(lines[i]);
    }
    documents.push_back(std::move(document));
  }
  lines.clear();
}

}  // namespace

std::vector<fs::path> collect_input_files(const fs::path& input) {
  std::error_code error;
  const auto status = fs::status(input, error);
  require(fs::exists(status), "--input ", input.string(), " does not exist");
  if (fs::is_regular_file(status)) return {input};
  require(fs::is_directory(status), "--input ", input.string(),
          " is neither a regular file nor a directory");
  std::vector<fs::path> candidates;
  for (const auto& entry : fs::recursive_directory_iterator(
           input, fs::directory_options::follow_directory_symlink, error)) {
    if (entry.is_regular_file()) candidates.push_back(entry.path());
  }
  require(!error, "cannot list --input ", input.string(), ": ", error.message());
  std::sort(candidates.begin(), candidates.end());
  std::vector<fs::path> files;
  std::set<fs::path> seen;
  for (const auto& file : candidates) {
    if (is_strfile_index(file)) continue;
    if (!seen.insert(fs::canonical(file)).second) continue;
    files.push_back(file);
  }
  require(!files.empty(), "--input ", input.string(), " is empty: it holds no regular file");
  return files;
}

std::string read_text_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  require(in.good(), "cannot read ", file.string());
  std::ostringstream bytes;
  bytes << in.rdbuf();
  std::string text = bytes.str();
  const auto problem = find_text_problem(text);
  require(!problem, file.string(), " is not UTF-8 text: ", problem ? problem->what : "",
          " at byte offset ", problem ? problem->offset : 0);
  return text;
}

std::vector<std::string> split_documents(std::string_view raw) {
  const std::string text = normalise_newlines(raw);
  const auto lines = lines_of(text);
  const bool fortune_style =
      std::any_of(lines.begin(), lines.end(), [](std::string_view line) { return line == "%"; });
  std::vector<std::string> documents;
  std::vector<std::string_view> current;
  for (const auto line : lines) {
    const bool separator = fortune_style ? line == "%" : is_blank(line);
    if (separator)
      flush_document(current, documents);
    else
      current.push_back(line);
  }
  flush_document(current, documents);
  return documents;
}

DocumentSource document_source(const std::vector<fs::path>& files) {
  struct Cursor {
    std::vector<fs::path> files;
    std::size_t next_file = 0;
    std::vector<std::string> documents;
    std::size_t next_document = 0;
  };
  auto cursor = std::make_shared<Cursor>();
  cursor->files = files;
  return [cursor](std::string& document) {
    while (cursor->next_document == cursor->documents.size()) {
      if (cursor->next_file == cursor->files.size()) return false;
      cursor->documents = split_documents(read_text_file(cursor->files[cursor->next_file++]));
      cursor->next_document = 0;
    }
    document = std::move(cursor->documents[cursor->next_document++]);
    return true;
  };
}

}  // namespace metamorph::data
