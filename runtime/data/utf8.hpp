#pragma once
// UTF-8 validation for corpus text: tokenisers assume well-formed text, and a binary file fed in
// by mistake must be named with the place it goes wrong.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace metamorph::data {

struct TextProblem {
  std::size_t offset;  // byte offset of the first offending byte
  std::string what;    // "invalid UTF-8", "a NUL byte (binary data?)"
};

// nullopt when `bytes` is well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF) without NUL bytes.
std::optional<TextProblem> find_text_problem(std::string_view bytes);

}  // namespace metamorph::data
