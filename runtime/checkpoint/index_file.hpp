#pragma once
// index.h5: one HDF5 virtual dataset per global tensor over the rank files (so h5py and h5dump
// read whole tensors), the tensor table the loader plans its reads from, and the run's state.
#include <filesystem>
#include <vector>

#include "runtime/checkpoint/checkpoint_state.hpp"
#include "runtime/checkpoint/layout.hpp"

namespace metamorph::checkpoint {

// The version string saved checkpoints carry ("0.1.0 (git abc1234)").
std::string code_version();

// Writes step_dir/index.h5 (closed and fsync'ed). state.format_version and code_version are
// filled in here.
void write_index_file(const std::filesystem::path& step_dir,
                      const std::vector<TensorRecord>& tensors, const CheckpointState& state);

struct IndexContents {
  CheckpointState state;
  std::vector<TensorRecord> tensors;
  const TensorRecord* find(const std::string& name, TensorKind kind) const;
};

// Reads step_dir/index.h5; InputError naming the file for a newer format version or damage.
IndexContents read_index_file(const std::filesystem::path& step_dir);

}  // namespace metamorph::checkpoint
