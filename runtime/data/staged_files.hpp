#pragma once
// Output files that appear under their final names only when all of them are complete: each is
// written to a temporary sibling and renamed by commit(). Whatever was not committed when the
// object dies is removed, so a failed run never leaves a file that looks valid.
#include <filesystem>
#include <string>
#include <vector>

namespace metamorph::data {

class StagedFiles {
 public:
  StagedFiles() = default;
  ~StagedFiles();
  StagedFiles(const StagedFiles&) = delete;
  StagedFiles& operator=(const StagedFiles&) = delete;

  // Registers `final_path` and returns the temporary path to write it under. Creates missing
  // parent directories; throws InputError when the location cannot be written.
  std::filesystem::path stage(const std::filesystem::path& final_path);

  // Renames every staged file to its final name, in the order they were staged (stage the file
  // that marks a complete output last). Throws InputError if a rename fails.
  void commit();

  // Removes the temporaries without committing.
  void discard() noexcept;

 private:
  struct Entry {
    std::filesystem::path temp;
    std::filesystem::path final_path;
  };
  std::vector<Entry> entries_;
};

}  // namespace metamorph::data
