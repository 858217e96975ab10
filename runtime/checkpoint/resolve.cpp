#include <algorithm>
#include <cstring>

#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/file_sync.hpp"
#include "runtime/checkpoint/layout.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;
using namespace checkpoint;

namespace {

bool is_committed(const fs::path& dir) {
  std::error_code ignored;
  return fs::is_regular_file(dir / kCommitMarker, ignored);
}

// Committed step directories under root, newest first.
std::vector<std::pair<std::int64_t, fs::path>> committed_steps(const fs::path& root) {
  std::vector<std::pair<std::int64_t, fs::path>> steps;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const auto step = parse_step_dir_name(entry.path().filename().string());
    if (step && entry.is_directory() && is_committed(entry.path()))
      steps.emplace_back(*step, entry.path());
  }
  std::sort(steps.begin(), steps.end(), [](const auto& a, const auto& b) { return a > b; });
  return steps;
}

std::string latest_name(const fs::path& root) {
  std::error_code error;
  if (!fs::is_regular_file(root / kLatestFile, error)) return {};
  std::string name = read_text_file(root / kLatestFile);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  return name;
}

}  // namespace

fs::path resolve_checkpoint(const fs::path& path, std::optional<std::int64_t> step) {
  std::error_code error;
  require(fs::exists(path, error), "checkpoint ", path.string(), " does not exist");
  require(fs::is_directory(path, error), "checkpoint ", path.string(),
          " is not a directory (give a checkpoint root or one of its step_* directories)");
  if (step) {
    const fs::path dir = path / step_dir_name(*step);
    require(fs::is_directory(dir), "checkpoint ", path.string(), " has no step ", *step,
            " (no directory ", dir.filename().string(), ")");
    require(is_committed(dir), "checkpoint ", dir.string(),
            " is incomplete: no COMMITTED marker (its save was interrupted)");
    return dir;
  }
  const std::string name =
      (path.filename().empty() ? path.parent_path() : path).filename().string();
  // A .tmp directory may hold COMMITTED already (killed just before its rename); it is still
  // not a checkpoint until renamed, and a .trash one is being deleted.
  if (name.ends_with(kTmpSuffix) || name.ends_with(kTrashSuffix))
    throw InputError(concat("checkpoint ", path.string(),
                            " is incomplete: an interrupted save or deletion, not a checkpoint"));
  if (is_committed(path)) return path;
  if (parse_step_dir_name(name) || fs::exists(path / kIndexFile))
    throw InputError(concat("checkpoint ", path.string(),
                            " is incomplete: no COMMITTED marker (its save was interrupted)"));
  const std::string latest = latest_name(path);
  if (!latest.empty() && parse_step_dir_name(latest) && is_committed(path / latest))
    return path / latest;
  // `latest` is moved only after a step is committed, so a missing or stale pointer means a save
  // died between those two renames: the newest committed step is the right one.
  const auto steps = committed_steps(path);
  require(!steps.empty(), path.string(),
          " is not a metamorph checkpoint: no 'latest' file and no committed step_* directory");
  return steps.front().second;
}

void apply_retention(const fs::path& root, int keep_last) {
  require(keep_last >= 0, "--keep-last must be 0 (keep all) or positive, got ", keep_last);
  if (keep_last == 0) return;
  const auto steps = committed_steps(root);
  if (steps.empty()) return;
  const std::string latest = latest_name(root);
  std::error_code error;
  for (std::size_t i = static_cast<std::size_t>(keep_last); i < steps.size(); ++i) {
    const fs::path& dir = steps[i].second;
    if (dir.filename() == latest) continue;
    // Rename first: a half-deleted directory must never look like a committed step.
    const fs::path trash = dir.string() + kTrashSuffix;
    fs::rename(dir, trash, error);
    if (!error) fs::remove_all(trash, error);
  }
  // Leftovers of interrupted saves and deletions of steps older than the newest commit.
  std::vector<fs::path> leftovers;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string name = entry.path().filename().string();
    for (const char* suffix : {kTmpSuffix, kTrashSuffix})
      if (name.ends_with(suffix)) {
        const auto step = parse_step_dir_name(name.substr(0, name.size() - std::strlen(suffix)));
        if (step && *step < steps.front().first) leftovers.push_back(entry.path());
      }
  }
  for (const auto& path : leftovers) fs::remove_all(path, error);
}

}  // namespace metamorph
