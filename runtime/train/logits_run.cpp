#include "runtime/train/logits_run.hpp"

#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>

#include "models/init.hpp"
#include "models/parameter_transfer.hpp"
#include "models/transformer.hpp"
#include "runtime/checkpoint/checkpoint.hpp"
#include "runtime/checkpoint/index_file.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/npy_file.hpp"
#include "runtime/train/compute_device.hpp"

namespace metamorph {

namespace fs = std::filesystem;

namespace {

// Element i of an integer .npy array, widened; InputError for float arrays.
std::int64_t integer_at(const NpyArray& a, std::size_t i, const fs::path& path) {
  const char* p = a.data.data();
  auto read = [&](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, p + i * sizeof(v), sizeof(v));
    return static_cast<std::int64_t>(v);
  };
  if (a.descr == "<i4") return read(std::int32_t{});
  if (a.descr == "<i8") return read(std::int64_t{});
  if (a.descr == "<u2") return read(std::uint16_t{});
  if (a.descr == "<i2") return read(std::int16_t{});
  if (a.descr == "<u4") return read(std::uint32_t{});
  if (a.descr == "|u1") return read(std::uint8_t{});
  if (a.descr == "|i1") return read(std::int8_t{});
  if (a.descr == "<u8") {
    const auto v = static_cast<std::uint64_t>(read(std::int64_t{}));
    return v > static_cast<std::uint64_t>(INT64_MAX) ? -1 : static_cast<std::int64_t>(v);
  }
  throw InputError(concat(path.string(), ": token ids must be integers, the array is ", a.descr,
                          " (valid: int8 to int64, uint8 to uint64)"));
}

}  // namespace

TokenRows read_token_rows(const fs::path& path, std::int64_t seq) {
  require(fs::is_regular_file(path), "--tokens ", path.string(), ": no such file");
  require(seq >= 0, "--seq must be >= 0, got ", seq);
  TokenRows rows;
  if (path.extension() == ".npy") {
    const NpyArray a = read_npy(path);
    require(a.shape.size() == 1 || a.shape.size() == 2, path.string(), ": token array of shape ",
            shape_string(a.shape), "; expected [seq] or [batch, seq]");
    rows.batch = a.shape.size() == 2 ? a.shape[0] : 1;
    rows.seq = a.shape.back();
    require(seq == 0 || seq == rows.seq, "--seq ", seq, " differs from the array's rows of ",
            rows.seq, " tokens in ", path.string());
    rows.ids.resize(static_cast<std::size_t>(rows.batch * rows.seq));
    for (std::size_t i = 0; i < rows.ids.size(); ++i) {
      const std::int64_t v = integer_at(a, i, path);
      require(v >= 0 && v <= INT32_MAX, path.string(), ": token ", i, " is ", v,
              ", not a token id (0 to 2^31-1)");
      rows.ids[i] = static_cast<std::int32_t>(v);
    }
  } else {
    std::ifstream in(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    require(bytes.size() % 4 == 0, path.string(), ": ", bytes.size(),
            " bytes is not a whole number of int32 token ids (raw files are little-endian int32;",
            " .npy files are read by their header)");
    const auto n = static_cast<std::int64_t>(bytes.size() / 4);
    rows.seq = seq == 0 ? n : seq;
    require(rows.seq > 0 && n % rows.seq == 0, path.string(), ": ", n,
            " token ids do not split into rows of --seq ", rows.seq);
    rows.batch = n / rows.seq;
    rows.ids.resize(static_cast<std::size_t>(n));
    std::memcpy(rows.ids.data(), bytes.data(), bytes.size());
  }
  require(rows.batch > 0 && rows.seq > 0, path.string(), ": no tokens (", rows.batch, " rows of ",
          rows.seq, ")");
  return rows;
}

LogitsResult write_logits(const LogitsOptions& o) {
  require(o.micro_batch > 0, "logits: --micro-batch must be positive, got ", o.micro_batch);
  require(!o.out.empty(), "logits: --out FILE.npy is required");
  const TokenRows rows = read_token_rows(o.tokens, o.seq);
  const fs::path dir = resolve_checkpoint(o.checkpoint);
  const ModelConfig config = model_config_from_json(checkpoint::read_index_file(dir).state.config);
  for (std::size_t i = 0; i < rows.ids.size(); ++i) {
    const auto row = static_cast<std::int64_t>(i) / rows.seq,
               col = static_cast<std::int64_t>(i) % rows.seq;
    require(rows.ids[i] < config.vocab_size, o.tokens, ": token [", row, ", ", col, "] is ",
            rows.ids[i], ", outside the model's vocabulary [0, ", config.vocab_size, ")");
  }
  require(rows.seq <= config.max_position_embeddings, o.tokens, ": rows of ", rows.seq,
          " tokens exceed the model's max_position_embeddings ", config.max_position_embeddings);

  ComputeDevice device = make_compute_device(o.device, node_local_rank());
  Backend& backend = *device.backend;
  ParameterSet params = make_parameters(backend, config);
  LoadOptions load;
  load.with_optimizer = false;
  // Checkpoints hold fp32 values: on a GPU they are read into a host copy, uploaded as masters
  // and rounded into the bf16 weights the forward pass uses (as `train --device cuda` does).
  LogitsResult result;
  {
    ParameterSet host = host_parameters(backend, params, false);  // freed once uploaded
    result.step = load_checkpoint(dir, host, load).step;
    if (o.device != Device::cpu) upload_parameters(backend, host, params, false);
  }
  // Inference only: the f32 gradients would be the largest allocation on a GPU (4 bytes per
  // parameter beside 2 of bf16 weights and 4 of masters, which the sigmoid router's bias reads).
  for (Parameter& p : params.all()) p.grad = Tensor();
  params.flat_grads = Tensor();
  Transformer model(backend, config, params);

  result.batch = rows.batch;
  result.seq = rows.seq;
  result.vocab = config.vocab_size;
  std::vector<float> logits(static_cast<std::size_t>(rows.batch * rows.seq * config.vocab_size));
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t first = 0; first < rows.batch; first += o.micro_batch) {
    const std::int64_t n = std::min(o.micro_batch, rows.batch - first);
    Tensor ids = backend.host_empty({n, rows.seq}, DType::i32);
    std::memcpy(ids.data<std::int32_t>(), rows.ids.data() + first * rows.seq,
                static_cast<std::size_t>(n * rows.seq) * sizeof(std::int32_t));
    const Tensor out =
        backend.to_host(model.logits(backend.from_host(ids, DType::i32)), DType::f32);
    MM_ASSERT(out.numel() == n * rows.seq * config.vocab_size, "logits of shape ",
              shape_string(out.shape()));
    std::memcpy(logits.data() + first * rows.seq * config.vocab_size, out.data<float>(),
                static_cast<std::size_t>(out.numel()) * sizeof(float));
  }
  result.forward_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_npy(o.out, "<f4", {rows.batch, rows.seq, config.vocab_size}, logits.data());
  return result;
}

}  // namespace metamorph
