#pragma once
// The text side of `data prepare`: which files an input names, and how a file's text is cut
// into documents.
//
// Files: a file input is itself; a directory means every regular file below it, recursively,
// in sorted path order. Skipped: strfile indexes (X.dat next to X, as the fortunes package
// ships) and second names of a file already taken (its X.u8 symlinks).
//
// Documents: CRLF becomes LF and a leading byte-order mark is dropped. A file with a line that is
// exactly "%" uses the fortune convention: documents are the entries between such lines.
// Otherwise documents are paragraphs separated by blank (whitespace-only) lines, so a file
// without blank lines is one document. Blank lines at a document's ends are trimmed; empty
// documents are dropped.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/data/sentencepiece_tokenizer.hpp"

namespace metamorph::data {

// InputError when the input is missing or holds no file.
std::vector<std::filesystem::path> collect_input_files(const std::filesystem::path& input);

// The file's bytes; InputError naming the file and byte offset when they are not UTF-8 text.
std::string read_text_file(const std::filesystem::path& file);

std::vector<std::string> split_documents(std::string_view text);

// Every document of every file, in order, reading one file at a time.
DocumentSource document_source(const std::vector<std::filesystem::path>& files);

}  // namespace metamorph::data
