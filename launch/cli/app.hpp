#pragma once

namespace metamorph::cli {

// Runs `metamorph <command> ...` and returns its exit code: 0 ok, 1 a requested check failed,
// 2 bad input or usage (one line on stderr), 3 an internal error.
int run_cli(int argc, char** argv);

}  // namespace metamorph::cli
