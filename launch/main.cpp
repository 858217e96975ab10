#include "launch/cli/app.hpp"

int main(int argc, char** argv) {
  return metamorph::cli::run_cli(argc, argv);
}
