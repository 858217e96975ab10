#pragma once
// Errors metamorph reports to its user. Every failure the user can cause is an exception whose
// message names the bad value and what would be valid; `metamorph` prints it as one line and
// exits with code 2 (UsageError, InputError) or 1 (CheckFailed).
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace metamorph {

// Bad input: options, configs, files, layouts. Exit code 2.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A check the user asked for failed (ckpt verify, eval thresholds). Exit code 1.
class CheckFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

// require(cond, "--seq ", seq, " must be positive"): throws InputError with the joined message.
template <class... Parts>
void require(bool condition, Parts&&... parts) {
  if (!condition) throw InputError(concat(std::forward<Parts>(parts)...));
}

// An internal invariant; failing it is a bug in metamorph, not in the input.
#define MM_ASSERT(cond, ...)                                                              \
  do {                                                                                    \
    if (!(cond))                                                                          \
      throw std::logic_error(                                                             \
          ::metamorph::concat(__FILE__, ":", __LINE__, ": ", #cond, " ", ##__VA_ARGS__)); \
  } while (0)

}  // namespace metamorph
