#include "runtime/data/utf8.hpp"

namespace metamorph::data {

namespace {

bool is_continuation(unsigned char byte) {
  return (byte & 0xC0) == 0x80;
}

// Length of the well-formed sequence starting at bytes[i], or 0 (RFC 3629, table 3-7 of Unicode).
std::size_t sequence_length(std::string_view bytes, std::size_t i) {
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(bytes[i + k]); };
  const unsigned char lead = at(0);
  if (lead < 0x80) return 1;
  std::size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // past U+10FFFF
  } else {
    return 0;
  }
  if (i + length > bytes.size()) return 0;
  if (at(1) < low || at(1) > high) return 0;
  for (std::size_t k = 2; k < length; ++k)
    if (!is_continuation(at(k))) return 0;
  return length;
}

}  // namespace

std::optional<TextProblem> find_text_problem(std::string_view bytes) {
  std::size_t i = 0;
  while (i < bytes.size()) {
    if (bytes[i] == '\0') return TextProblem{i, "a NUL byte (binary data?)"};
    const std::size_t length = sequence_length(bytes, i);
    if (length == 0) return TextProblem{i, "invalid UTF-8"};
    i += length;
  }
  return std::nullopt;
}

}  // namespace metamorph::data
