#pragma once
// What the CUDA runtime can see: used by `metamorph version` and `bench` to describe the machine.
#include <string>

namespace metamorph::cuda {

// Number of visible devices; 0 when there is no driver or no GPU (never throws).
int device_count();
// "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB" or the reason none is usable.
std::string describe_device(int index);
// Makes `index` the calling thread's current device; throws InputError naming CUDA's reason.
void set_device(int index);

}  // namespace metamorph::cuda
