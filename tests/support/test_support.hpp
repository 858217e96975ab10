#pragma once
// Helpers shared by the tests: temporary directories, running the CLI in-process, the PyTorch
// reference interpreter.
#include <filesystem>
#include <string>
#include <vector>

namespace metamorph::test {

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

struct CliResult {
  int exit_code = 0;
  std::string out;
  std::string err;
};

// Runs `metamorph args...` in this process, capturing std::cout and std::cerr.
CliResult run_cli(const std::vector<std::string>& args);

// Runs a shell command, returns its exit code and stdout+stderr.
CliResult run_shell(const std::string& command);

// Debian's python3 with torch/numpy/h5py (METAMORPH_PYTHON), and the repository root.
std::string python();
std::filesystem::path source_dir();
// The built metamorph binary (METAMORPH_BINARY), for tests that must run it as a process.
std::string metamorph_binary();

void write_file(const std::filesystem::path& path, const std::string& bytes);
std::string read_file(const std::filesystem::path& path);

}  // namespace metamorph::test
