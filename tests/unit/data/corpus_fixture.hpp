#pragma once
// Deterministic made-up text for the data tests: sentences from a small word list, so that a
// SentencePiece model trains on it in about a second.
#include <cstdint>
#include <string>
#include <vector>

namespace metamorph::data::test_corpus {

inline std::vector<std::string> documents(int count, int seed = 1) {
  static const char* const kWords[] = {
      "the",     "model",  "learns", "from",      "tokens", "every",   "expert", "routes",
      "a",       "batch",  "while",  "gradients", "flow",   "through", "layers", "quickly",
      "fortune", "cookie", "says",   "today",     "is",     "bright",  "and",    "calm",
      "numbers", "42",     "1999",   "seven",     "ranks",  "share",   "data",   "evenly"};
  std::uint32_t state = static_cast<std::uint32_t>(seed) * 2654435761u + 1;
  const auto next = [&state]() {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  std::vector<std::string> out;
  for (int d = 0; d < count; ++d) {
    std::string text;
    const int lines = 1 + static_cast<int>(next() % 4);
    for (int l = 0; l < lines; ++l) {
      if (l > 0) text += "\n";
      const int words = 3 + static_cast<int>(next() % 9);
      for (int w = 0; w < words; ++w) {
        if (w > 0) text += " ";
        text += kWords[next() % (sizeof(kWords) / sizeof(kWords[0]))];
      }
      text += next() % 3 == 0 ? "!" : ".";
    }
    out.push_back(text);
  }
  return out;
}

// The documents in the fortune convention: entries separated by lines holding only "%".
inline std::string fortune_file(const std::vector<std::string>& documents) {
  std::string text;
  for (const auto& document : documents) text += document + "\n%\n";
  return text;
}

}  // namespace metamorph::data::test_corpus
