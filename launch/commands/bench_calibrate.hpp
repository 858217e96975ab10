#pragma once
// `metamorph bench calibrate`: measures this machine for the planner (GEMM throughput by shape,
// memory bandwidth, and under mpirun collective times by size) and writes calibration.json.
#include <boost/program_options.hpp>

namespace metamorph::cli {

int bench_calibrate(const boost::program_options::variables_map& vm);

}  // namespace metamorph::cli
