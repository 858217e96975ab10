#pragma once
// Parameters between the host and the backend's device. Checkpoints, initialisation and
// anything else that reads or writes weights on the host go through these, so the host side
// always sees fp32 masters and CPU and GPU checkpoints are the same files.
#include "models/parameter.hpp"
#include "runtime/core/backend.hpp"

namespace metamorph {

// Writes host f32 values into p: the fp32 master and the (bf16) weights from it when p has a
// master, else the weights themselves. A master of some rows only (ZeRO-1,
// Parameter::master_holds_rows_only) takes values of its shape and sets those rows of the
// weights; the caller all-gathers the rest.
void set_parameter_from_host(Backend& backend, Parameter& p, const Tensor& host_f32);

// A host copy of `params` with the same names, shapes and offsets: values are the fp32
// masters (or the f32 weights), and with `with_optimizer` the AdamW moments (f32). Grads are
// not copied. On the CPU the copy shares the tensors (no bytes move). Where the master holds
// some rows only (ZeRO-1 on a GPU), the copy's value is those rows and its offset theirs
// (optim_offset): the rank has no fp32 copy of the other rows.
ParameterSet host_parameters(Backend& backend, const ParameterSet& params, bool with_optimizer);

// The inverse: writes a host set's values (and, with `with_optimizer`, moments) into `params`,
// matched by name. A ZeRO-1 master's rows reach only those rows of the weights: all-gather
// them afterwards (Zero1::all_gather_parameters).
void upload_parameters(Backend& backend, const ParameterSet& host, ParameterSet& params,
                       bool with_optimizer);

// Writes into every parameter of `shards` (any tensor-, pipeline- or expert-parallel split) its
// block of the same-named whole tensor in `whole` (host f32, unsharded, the same global
// shapes). Values only. For changes that need the whole tensor (adding the [MASK] row).
void copy_blocks_from_whole(Backend& backend, const ParameterSet& whole, ParameterSet& shards);

}  // namespace metamorph
