#pragma once
// One rank's file of a checkpoint: every shard it owns, each dataset chunked with Fletcher32
// and labelled with its tensor's global name, global shape, offset and stored dtype.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "runtime/checkpoint/layout.hpp"

namespace metamorph::checkpoint {

// A shard to write: what it is and where its bytes are (contiguous, `record.dtype`).
struct ShardView {
  ShardRecord record;
  const void* data = nullptr;
};

// Called before each dataset is written (file, tensor); tests throw from it to simulate a crash
// or a full disk in the middle of a save.
using WriteHook = std::function<void(const std::filesystem::path&, const std::string&)>;

// Writes, closes and fsyncs `path`. Throws InputError naming the file and the tensor.
void write_rank_file(const std::filesystem::path& path, const std::vector<ShardView>& shards,
                     const WriteHook& before_write = {});

// The shard table a rank file carries (what index.h5 is built from).
std::vector<ShardRecord> read_shard_table(const std::filesystem::path& path);

}  // namespace metamorph::checkpoint
