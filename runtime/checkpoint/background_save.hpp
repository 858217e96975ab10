#pragma once
// A checkpoint whose rank files are written by a background thread, so training goes on while
// the bytes reach the disk. For a GPU run: the caller downloads the fp32 masters and moments into
// host tensors (the snapshot this object owns), the thread writes them, and the ranks commit
// later, together:
//
//   auto save = std::make_unique<BackgroundSave>(root, std::move(host_params), state, context);
//   ... steps ...
//   if (all ranks report save->written()) path = save->finish();   // collective
//
// The constructor and finish() communicate (RankContext::all_ok) and must run on the thread
// that owns the run's communication; the background thread only writes this rank's file. The
// commit protocol, atomicity and failure handling are save_checkpoint's
// (docs/checkpoint-format.md): until finish() commits, `latest` names the previous checkpoint.
#include <atomic>
#include <filesystem>
#include <string>
#include <thread>

#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/save_protocol.hpp"

namespace metamorph {

class BackgroundSave {
 public:
  // Creates the step's directory (collective) and starts writing `params` (host tensors).
  BackgroundSave(const std::filesystem::path& root, ParameterSet params,
                 const CheckpointState& state, const RankContext& context,
                 const SaveOptions& options = {});
  // Waits for the writer; a save never finished stays uncommitted (step_N.tmp).
  ~BackgroundSave();
  BackgroundSave(const BackgroundSave&) = delete;
  BackgroundSave& operator=(const BackgroundSave&) = delete;

  std::int64_t step() const { return save_.state.step; }
  // This rank's file is on disk (or failed: finish() reports it).
  bool written() const { return written_.load(std::memory_order_acquire); }
  // Waits for this rank's writer, then agrees with the other ranks and commits (collective);
  // returns the committed step directory. Throws on every rank when any rank failed.
  std::filesystem::path finish();

 private:
  ParameterSet params_;  // the snapshot the thread writes; never touched by the caller
  RankContext context_;
  SaveOptions options_;
  checkpoint::SaveInProgress save_;
  std::string error_;  // written by the thread before written_ is set
  std::atomic<bool> written_{false};
  std::thread writer_;
};

}  // namespace metamorph
