#pragma once
// Starts MPI for the lifetime of the object (unless something else already did) and finalizes it
// at the end. World errors return codes instead of aborting, so they become exceptions.
#include <mpi.h>

namespace metamorph {

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int world_rank() const;
  int world_size() const;

 private:
  bool owns_ = false;
};

}  // namespace metamorph
