#include "models/parameter_transfer.hpp"

#include <vector>

#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

// dst (on the device) = host f32 values, converted to dst's dtype.
void write_from_host(Backend& backend, const Tensor& host_f32, Tensor& dst) {
  MM_ASSERT(host_f32.shape() == dst.shape(), "host ", shape_string(host_f32.shape()), " into ",
            shape_string(dst.shape()));
  if (host_f32.same_storage(dst)) return;
  const Tensor uploaded = backend.from_host(host_f32, dst.dtype());
  backend.copy(uploaded, dst);
}

}  // namespace

void set_parameter_from_host(Backend& backend, Parameter& p, const Tensor& host_f32) {
  if (p.master.defined()) {
    write_from_host(backend, host_f32, p.master);
    Tensor rows = p.master_rows(p.value);
    backend.copy(p.master, rows);  // converts f32 -> bf16 on the device
  } else {
    write_from_host(backend, host_f32, p.value);
  }
}

ParameterSet host_parameters(Backend& backend, const ParameterSet& params, bool with_optimizer) {
  ParameterSet host;
  for (const auto& p : params.all()) {
    Parameter h;
    h.name = p.name;
    h.global_shape = p.global_shape;
    // A master of some rows only (ZeRO-1): the copy is those rows, placed where they lie.
    h.offset = p.master_holds_rows_only() ? p.optim_offset : p.offset;
    h.optim_offset = p.optim_offset;
    h.weight_decay = p.weight_decay;
    h.value = backend.to_host(p.master.defined() ? p.master : p.value, DType::f32);
    if (with_optimizer && p.adam_m.defined()) {
      h.adam_m = backend.to_host(p.adam_m, DType::f32);
      h.adam_v = backend.to_host(p.adam_v, DType::f32);
    }
    host.add(std::move(h));
  }
  return host;
}

void upload_parameters(Backend& backend, const ParameterSet& host, ParameterSet& params,
                       bool with_optimizer) {
  for (auto& p : params.all()) {
    const Parameter* h = host.find(p.name);
    MM_ASSERT(h != nullptr, "no host copy of ", p.name);
    set_parameter_from_host(backend, p, h->value);
    if (with_optimizer && h->adam_m.defined() && p.adam_m.defined()) {
      write_from_host(backend, h->adam_m, p.adam_m);
      write_from_host(backend, h->adam_v, p.adam_v);
    }
  }
}

void copy_blocks_from_whole(Backend& backend, const ParameterSet& whole, ParameterSet& shards) {
  for (auto& p : shards.all()) {
    const Parameter* w = whole.find(p.name);
    require(w != nullptr, "parameter ", p.name, " is missing from the whole model");
    require(w->value.shape() == p.global_shape, "parameter ", p.name, ": the whole tensor is ",
            shape_string(w->value.shape()), ", the shards' global shape ",
            shape_string(p.global_shape));
    const Shape& local = p.local_shape();
    Tensor block = backend.host_empty(local, DType::f32);
    const float* src = w->value.data<float>();
    float* dst = block.data<float>();
    // Row-major walk over the block; each element's global index from its local coordinates.
    const auto rank = local.size();
    std::vector<std::int64_t> coord(rank, 0);
    for (std::int64_t i = 0; i < block.numel(); ++i) {
      std::int64_t global = 0;
      for (std::size_t d = 0; d < rank; ++d)
        global = global * p.global_shape[d] + coord[d] + p.offset[d];
      dst[i] = src[global];
      for (std::size_t d = rank; d-- > 0;) {
        if (++coord[d] < local[d]) break;
        coord[d] = 0;
      }
    }
    set_parameter_from_host(backend, p, block);
  }
}

}  // namespace metamorph
