#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/hdf5_util.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/checkpoint/tensor_reader.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace fs = std::filesystem;
using namespace checkpoint;

namespace {

void read_into(TensorReader& reader, const TensorRecord& record, const Shape& offset,
               Tensor& tensor) {
  require(tensor.device() == Device::cpu, "tensor ", record.name,
          ": load into host memory, then copy to the GPU");
  reader.read(record, offset, tensor.shape(), stored_dtype_of(tensor.dtype()), tensor.raw());
}

}  // namespace

CheckpointState load_checkpoint(const fs::path& dir_or_root, ParameterSet& into,
                                const LoadOptions& options) {
  checkpoint::QuietHdf5Errors quiet;
  const fs::path dir = resolve_checkpoint(dir_or_root);
  if (options.verify) {
    const auto faults = verify_checkpoint(dir);
    if (!faults.empty())
      throw InputError(
          concat(faults.front().to_string(),
                 faults.size() > 1
                     ? concat(" (and ", faults.size() - 1,
                              " more faults; run 'metamorph ckpt verify ", dir.string(), "')")
                     : std::string()));
  }
  const IndexContents index = read_index_file(dir);
  TensorReader reader(dir);
  for (auto& p : into.all()) {
    const TensorRecord* model = index.find(p.name, TensorKind::model);
    require(model != nullptr, "checkpoint ", dir.string(), " has no tensor ", p.name);
    require(model->shape == p.global_shape, "checkpoint ", dir.string(), ", tensor ", p.name,
            ": the checkpoint's global shape is ", shape_string(model->shape),
            ", the model expects ", shape_string(p.global_shape), " (a different model config?)");
    const TensorRecord* master = index.find(p.name, TensorKind::master);
    const Shape offset = p.offset.empty() ? Shape(p.global_shape.size(), 0) : p.offset;
    const Shape optim_offset = p.optim_offset.empty() ? offset : p.optim_offset;
    // An fp32 weight is its own master: take the fp32 copy when the checkpoint has one.
    const bool value_from_master = master != nullptr && p.value.dtype() == DType::f32;
    read_into(reader, value_from_master ? *master : *model, offset, p.value);
    if (p.master.defined()) read_into(reader, master ? *master : *model, optim_offset, p.master);
    if (!options.with_optimizer || !p.adam_m.defined()) continue;
    const TensorRecord* m = index.find(p.name, TensorKind::adam_m);
    const TensorRecord* v = index.find(p.name, TensorKind::adam_v);
    require(m != nullptr && v != nullptr, "checkpoint ", dir.string(), ", tensor ", p.name,
            ": no optimizer state was saved; load without the optimizer to start it afresh");
    MM_ASSERT(p.adam_v.defined(), p.name, ": adam_m is allocated but adam_v is not");
    read_into(reader, *m, optim_offset, p.adam_m);
    read_into(reader, *v, optim_offset, p.adam_v);
  }
  return index.state;
}

}  // namespace metamorph
