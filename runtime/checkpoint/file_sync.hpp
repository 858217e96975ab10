#pragma once
// Durability for the commit protocol: a rename is only a commit once the renamed data and the
// directory entry are on disk, so every step of a save is fsync'ed before the next one.
#include <filesystem>
#include <string>

namespace metamorph::checkpoint {

// fsync a file or a directory by path; throws InputError naming the path on failure.
void sync_path(const std::filesystem::path& path);
// Writes `text` to `path` via a temporary sibling, fsync, rename, fsync of the directory.
void write_file_atomically(const std::filesystem::path& path, const std::string& text);
std::string read_text_file(const std::filesystem::path& path);

}  // namespace metamorph::checkpoint
