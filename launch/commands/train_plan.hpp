#pragma once
// `metamorph train --plan plan.json`: the run takes its layout, batch, sequence, recompute,
// interleaved pairs and (unless a model source is given) model from the plan `metamorph plan`
// wrote.
#include <boost/program_options.hpp>

#include "planner/plan_file.hpp"
#include "runtime/train/training_run.hpp"

namespace metamorph::cli {

// Overwrites the options the plan fixes. A flag given on the command line that disagrees with
// the plan, or a plan feature this runtime does not execute, is an InputError naming both.
void apply_plan(const planner::Plan& plan, const boost::program_options::variables_map& vm,
                RunOptions& options);

}  // namespace metamorph::cli
