#include "runtime/backends/cuda/cudnn_attention_graph.hpp"

#if METAMORPH_HAVE_CUDNN_HEADERS
#include <algorithm>
#include <limits>
#include <utility>

#include "runtime/core/error.hpp"

namespace metamorph::cuda {
namespace {

using Dims = std::vector<std::int64_t>;

// Collects the tensors and operations of one graph; every descriptor lives until the plan dies.
class GraphBuilder {
 public:
  GraphBuilder(const CudnnLibrary& lib, SdpaPlan& owner) : lib_(lib), owner_(owner) {}

  const CudnnDescriptor& tensor(const char* name, std::int64_t uid, const Dims& dims,
                                const Dims& strides, cudnnDataType_t type, bool is_virtual,
                                bool by_value = false) {
    CudnnDescriptor& t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, concat("tensor ", name));
    t.set_data_type(CUDNN_ATTR_TENSOR_DATA_TYPE, type)
        .set_int64s(CUDNN_ATTR_TENSOR_DIMENSIONS, dims)
        .set_int64s(CUDNN_ATTR_TENSOR_STRIDES, strides)
        .set_int64(CUDNN_ATTR_TENSOR_UNIQUE_ID, uid)
        .set_int64(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, 16)  // tensor-core engines need 16 B
        .set_bool(CUDNN_ATTR_TENSOR_IS_VIRTUAL, is_virtual);
    if (by_value) t.set_bool(CUDNN_ATTR_TENSOR_IS_BY_VALUE, true);
    t.finalize();
    return t;
  }
  // Intermediates: never in memory, so their strides only give the dimension order.
  const CudnnDescriptor& virt(const char* name, const Dims& dims, const Dims& strides,
                              cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    return tensor(name, next_virtual_uid_++, dims, strides, type, /*is_virtual=*/true);
  }
  // An f32 scalar passed by value at execution, broadcast over every 4-D operand.
  const CudnnDescriptor& scalar(const char* name, std::int64_t uid) {
    return tensor(name, uid, {1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, false, true);
  }

  void pointwise(const char* name, cudnnPointwiseMode_t mode, cudnnDataType_t compute,
                 const CudnnDescriptor& x, const CudnnDescriptor* b, const CudnnDescriptor* t,
                 const CudnnDescriptor& y, std::int64_t axis = -1) {
    CudnnDescriptor& pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, concat("pointwise ", name));
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
        .set_data_type(CUDNN_ATTR_POINTWISE_MATH_PREC, compute);
    if (mode == CUDNN_POINTWISE_GEN_INDEX) pw.set_int64(CUDNN_ATTR_POINTWISE_AXIS, axis);
    pw.finalize();
    CudnnDescriptor& op =
        make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, concat("pointwise op ", name));
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b != nullptr) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    if (t != nullptr) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, *t);
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    add_op(op);
  }
  void unary(const char* name, cudnnPointwiseMode_t mode, const CudnnDescriptor& x,
             const CudnnDescriptor& y) {
    pointwise(name, mode, CUDNN_DATA_FLOAT, x, nullptr, nullptr, y);
  }
  void binary(const char* name, cudnnPointwiseMode_t mode, const CudnnDescriptor& x,
              const CudnnDescriptor& b, const CudnnDescriptor& y) {
    pointwise(name, mode, CUDNN_DATA_FLOAT, x, &b, nullptr, y);
  }

  void matmul(const char* name, const CudnnDescriptor& a, const CudnnDescriptor& b,
              const CudnnDescriptor& c) {
    CudnnDescriptor& mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, concat("matmul ", name));
    mm.set_data_type(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT).finalize();
    CudnnDescriptor& op =
        make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, concat("matmul op ", name));
    op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
    add_op(op);
  }

  void reduction(const char* name, cudnnReduceTensorOp_t reduce, const CudnnDescriptor& x,
                 const CudnnDescriptor& y) {
    CudnnDescriptor& red = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, concat("reduction ", name));
    red.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce)
        .set_data_type(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT)
        .finalize();
    CudnnDescriptor& op =
        make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, concat("reduction op ", name));
    op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x)
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y)
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, red);
    add_op(op);
  }

  // A transposed view: same elements, dimensions and strides as y describes them.
  void reshape(const char* name, const CudnnDescriptor& x, const CudnnDescriptor& y) {
    CudnnDescriptor& op =
        make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, concat("reshape op ", name));
    op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x)
        .set_desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    add_op(op);
  }

  CudnnDescriptor& make(cudnnBackendDescriptorType_t type, std::string role) {
    owner_.keep_alive.push_back(std::make_unique<CudnnDescriptor>(lib_, type, std::move(role)));
    return *owner_.keep_alive.back();
  }
  const std::vector<cudnnBackendDescriptor_t>& ops() const { return ops_; }

 private:
  void add_op(CudnnDescriptor& op) {
    op.finalize();
    ops_.push_back(op.get());
  }

  const CudnnLibrary& lib_;
  SdpaPlan& owner_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  std::int64_t next_virtual_uid_ = 100;
};

// Our storage is q/out [b, s, h, d] and k/v [b, s, hk, d]; cuDNN sees [b, h, s, d] views.
Dims bhsd_strides(std::int64_t s, std::int64_t h, std::int64_t d) {
  return {s * h * d, d, h * d, 1};
}
// The same storage seen as the transpose [b, h, d, s].
Dims bhds_strides(std::int64_t s, std::int64_t h, std::int64_t d) {
  return {s * h * d, d, 1, h * d};
}

// Rows between one batch entry and the next in the bound tensors (a spec without storage_seq
// describes whole tensors).
std::int64_t storage_rows(const SdpaGraphSpec& s) {
  return s.storage_seq > 0 ? s.storage_seq : s.seq;
}

// score -> score where key <= query, the mask value elsewhere (top-left aligned: sq == sk).
const CudnnDescriptor& causal_mask(GraphBuilder& g, const CudnnDescriptor& score, const Dims& dims,
                                   const Dims& strides, const CudnnDescriptor& masked_value) {
  const CudnnDescriptor& row = g.virt("row index", dims, strides, CUDNN_DATA_INT32);
  const CudnnDescriptor& col = g.virt("column index", dims, strides, CUDNN_DATA_INT32);
  g.pointwise("row index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, score, nullptr, nullptr,
              row, /*axis=*/2);
  g.pointwise("column index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, score, nullptr, nullptr,
              col, /*axis=*/3);
  const CudnnDescriptor& keep = g.virt("row >= column", dims, strides, CUDNN_DATA_BOOLEAN);
  g.pointwise("row >= column", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, &col, nullptr,
              keep);
  const CudnnDescriptor& out = g.virt("masked score", dims, strides);
  // BINARY_SELECT: y = t ? x : b.
  g.pointwise("apply mask", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, score, &masked_value,
              &keep, out);
  return out;
}

void build_forward(GraphBuilder& g, const SdpaGraphSpec& s) {
  const std::int64_t b = s.batch, h = s.heads, hk = s.kv_heads, n = s.seq, d = s.dim;
  const std::int64_t st = storage_rows(s);
  const Dims score_dims{b, h, n, n}, score_strides{h * n * n, n * n, n, 1};
  const Dims row_dims{b, h, n, 1}, row_strides{h * n, n, 1, 1};

  const CudnnDescriptor& q =
      g.tensor("Q", kUidQ, {b, h, n, d}, bhsd_strides(st, h, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& kt =
      g.tensor("K^T", kUidK, {b, hk, d, n}, bhds_strides(st, hk, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& v =
      g.tensor("V", kUidV, {b, hk, n, d}, bhsd_strides(st, hk, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& scale = g.scalar("scale", kUidScale);

  const CudnnDescriptor& qk = g.virt("Q.K^T", score_dims, score_strides);
  g.matmul("Q.K^T", q, kt, qk);
  const CudnnDescriptor& scaled = g.virt("scaled score", score_dims, score_strides);
  g.binary("scale", CUDNN_POINTWISE_MUL, qk, scale, scaled);
  const CudnnDescriptor* score = &scaled;
  if (s.causal)
    score =
        &causal_mask(g, scaled, score_dims, score_strides, g.scalar("mask value", kUidMaskValue));

  // Softmax with its statistics: stats = max + log(sum exp(score - max)).
  const CudnnDescriptor& max = g.virt("row max", row_dims, row_strides);
  g.reduction("row max", CUDNN_REDUCE_TENSOR_MAX, *score, max);
  const CudnnDescriptor& shifted = g.virt("score - max", score_dims, score_strides);
  g.binary("score - max", CUDNN_POINTWISE_SUB, *score, max, shifted);
  const CudnnDescriptor& e = g.virt("exp", score_dims, score_strides);
  g.unary("exp", CUDNN_POINTWISE_EXP, shifted, e);
  const CudnnDescriptor& sum = g.virt("row sum", row_dims, row_strides);
  g.reduction("row sum", CUDNN_REDUCE_TENSOR_ADD, e, sum);
  const CudnnDescriptor& log_sum = g.virt("log row sum", row_dims, row_strides);
  g.unary("log row sum", CUDNN_POINTWISE_LOG, sum, log_sum);
  const CudnnDescriptor& stats =
      g.tensor("stats", kUidStats, row_dims, row_strides, CUDNN_DATA_FLOAT, false);
  g.binary("stats", CUDNN_POINTWISE_ADD, max, log_sum, stats);
  // The probabilities enter the second product in the i/o type, as the fused engines expect.
  const CudnnDescriptor& p = g.virt("P", score_dims, score_strides, CUDNN_DATA_BFLOAT16);
  g.binary("P", CUDNN_POINTWISE_DIV, e, sum, p);

  const CudnnDescriptor& o =
      g.tensor("O", kUidO, {b, h, n, d}, bhsd_strides(st, h, d), CUDNN_DATA_BFLOAT16, false);
  g.matmul("P.V", p, v, o);
}

// dX for the kv heads: the product over all h query heads, then (GQA) summed over each group.
void kv_gradient(GraphBuilder& g, const char* name, const CudnnDescriptor& transposed,
                 const CudnnDescriptor& rhs, const SdpaGraphSpec& s, std::int64_t uid) {
  const std::int64_t b = s.batch, h = s.heads, hk = s.kv_heads, n = s.seq, d = s.dim;
  const std::int64_t st = storage_rows(s);
  const CudnnDescriptor& out =
      g.tensor(name, uid, {b, hk, n, d}, bhsd_strides(st, hk, d), CUDNN_DATA_BFLOAT16, false);
  if (h == hk) {
    g.matmul(name, transposed, rhs, out);
    return;
  }
  const CudnnDescriptor& full =
      g.virt(name, {b, h, n, d}, {h * n * d, n * d, d, 1}, CUDNN_DATA_BFLOAT16);
  g.matmul(name, transposed, rhs, full);
  g.reduction(name, CUDNN_REDUCE_TENSOR_ADD, full, out);
}

void build_backward(GraphBuilder& g, const SdpaGraphSpec& s, SdpaPlan& plan) {
  const std::int64_t b = s.batch, h = s.heads, hk = s.kv_heads, n = s.seq, d = s.dim;
  const std::int64_t st = storage_rows(s);
  const Dims score_dims{b, h, n, n}, score_strides{h * n * n, n * n, n, 1};
  // The probabilities and dS seen transposed ([b, h, s_kv, s_q]) for the dV and dK products.
  const Dims transposed_strides{h * n * n, n * n, 1, n};
  const Dims row_dims{b, h, n, 1}, row_strides{h * n, n, 1, 1};

  const CudnnDescriptor& q =
      g.tensor("Q", kUidQ, {b, h, n, d}, bhsd_strides(st, h, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& kt =
      g.tensor("K^T", kUidK, {b, hk, d, n}, bhds_strides(st, hk, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& vt =
      g.tensor("V^T", kUidV, {b, hk, d, n}, bhds_strides(st, hk, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& o =
      g.tensor("O", kUidO, {b, h, n, d}, bhsd_strides(st, h, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& dout =
      g.tensor("dO", kUidDO, {b, h, n, d}, bhsd_strides(st, h, d), CUDNN_DATA_BFLOAT16, false);
  const CudnnDescriptor& stats =
      g.tensor("stats", kUidStats, row_dims, row_strides, CUDNN_DATA_FLOAT, false);
  const CudnnDescriptor& scale = g.scalar("scale", kUidScale);
  const CudnnDescriptor& one = g.scalar("one", kUidOne);

  // softmax_sum = sum over d of dO * O, kept in memory for the engine's second pass. The
  // multiplication by one stands where dropout's inverse scale would be: the engines expect it.
  const CudnnDescriptor& prod = g.virt("dO*O", {b, h, n, d}, {h * n * d, n * d, d, 1});
  g.binary("dO*O", CUDNN_POINTWISE_MUL, dout, o, prod);
  const CudnnDescriptor& row_sum = g.virt("sum dO*O", row_dims, row_strides);
  g.reduction("sum dO*O", CUDNN_REDUCE_TENSOR_ADD, prod, row_sum);
  const CudnnDescriptor& softmax_sum =
      g.tensor("softmax_sum", kUidSoftmaxSum, row_dims, row_strides, CUDNN_DATA_FLOAT, false);
  g.binary("softmax_sum", CUDNN_POINTWISE_MUL, row_sum, one, softmax_sum);

  // P = exp(scale * Q.K^T - stats), masked.
  const CudnnDescriptor& qk = g.virt("Q.K^T", score_dims, score_strides);
  g.matmul("Q.K^T", q, kt, qk);
  const CudnnDescriptor& scaled = g.virt("scaled score", score_dims, score_strides);
  g.binary("scale", CUDNN_POINTWISE_MUL, qk, scale, scaled);
  const CudnnDescriptor& centred = g.virt("score - stats", score_dims, score_strides);
  g.binary("score - stats", CUDNN_POINTWISE_SUB, scaled, stats, centred);
  const CudnnDescriptor* logits = &centred;
  if (s.causal)
    logits =
        &causal_mask(g, centred, score_dims, score_strides, g.scalar("mask value", kUidMaskValue));
  const CudnnDescriptor& p = g.virt("P", score_dims, score_strides);
  g.unary("exp", CUDNN_POINTWISE_EXP, *logits, p);

  // dV = P^T . dO
  const CudnnDescriptor& pt = g.virt("P^T", {b, h, n, n}, transposed_strides, CUDNN_DATA_BFLOAT16);
  g.reshape("P^T", p, pt);
  kv_gradient(g, "dV", pt, dout, s, kUidDV);

  // dS = P * (dO.V^T - softmax_sum) * scale
  const CudnnDescriptor& dp = g.virt("dO.V^T", score_dims, score_strides);
  g.matmul("dO.V^T", dout, vt, dp);
  const CudnnDescriptor& dp_centred = g.virt("dP - softmax_sum", score_dims, score_strides);
  g.binary("dP - softmax_sum", CUDNN_POINTWISE_SUB, dp, softmax_sum, dp_centred);
  const CudnnDescriptor& ds_unscaled = g.virt("dP*P", score_dims, score_strides);
  g.binary("dP*P", CUDNN_POINTWISE_MUL, dp_centred, p, ds_unscaled);
  const CudnnDescriptor& ds = g.virt("dS", score_dims, score_strides);
  g.binary("dS scale", CUDNN_POINTWISE_MUL, ds_unscaled, scale, ds);

  // dK = dS^T . Q
  const CudnnDescriptor& dst =
      g.virt("dS^T", {b, h, n, n}, transposed_strides, CUDNN_DATA_BFLOAT16);
  g.reshape("dS^T", ds, dst);
  kv_gradient(g, "dK", dst, q, s, kUidDK);

  // dQ = dS . K, K seen again untransposed.
  const CudnnDescriptor& k = g.virt("K", {b, hk, n, d}, bhsd_strides(st, hk, d));
  g.reshape("K", kt, k);
  const CudnnDescriptor& dq =
      g.tensor("dQ", kUidDQ, {b, h, n, d}, bhsd_strides(st, h, d), CUDNN_DATA_BFLOAT16, false);
  if (s.deterministic) {
    // The frontend library's deterministic choice on Hopper (its "dP workspace" path): dQ
    // straight out of the product, no accumulator that blocks add to with atomics. Not yet
    // confirmed on a GPU: tests/gpu repeats the backward and compares the bits.
    g.matmul("dS.K", ds, k, dq);
  } else {
    // The faster engine adds dQ up in an f32 accumulator with atomics, then converts.
    const CudnnDescriptor& accum = g.tensor("dQ accumulator", kUidDQAccum, {b, h, n, d},
                                            {h * n * d, n * d, d, 1}, CUDNN_DATA_FLOAT, false);
    g.matmul("dS.K", ds, k, accum);
    g.unary("dQ", CUDNN_POINTWISE_IDENTITY, accum, dq);
    plan.uses_dq_accumulator = true;
  }
}

// The numerical notes cuDNN attaches to a config's engine (tensor cores, non-deterministic, ...).
std::vector<cudnnBackendNumericalNote_t> engine_notes(const CudnnLibrary& lib, GraphBuilder& g,
                                                      const CudnnDescriptor& config) {
  CudnnDescriptor& engine = g.make(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine of a config");
  cudnnBackendDescriptor_t raw = engine.get();
  std::int64_t count = 0;
  lib.check(lib.get_attribute(config.get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &raw),
            "engine config: get its engine");
  std::vector<cudnnBackendNumericalNote_t> notes(CUDNN_NUMERICAL_NOTE_TYPE_COUNT);
  lib.check(lib.get_attribute(raw, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                              CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, notes.data()),
            "engine: get numerical notes");
  notes.resize(static_cast<std::size_t>(
      std::clamp<std::int64_t>(count, 0, CUDNN_NUMERICAL_NOTE_TYPE_COUNT)));
  return notes;
}

std::string describe_notes(const std::vector<cudnnBackendNumericalNote_t>& notes) {
  std::string text;
  for (cudnnBackendNumericalNote_t note : notes) {
    const char* name = note == CUDNN_NUMERICAL_NOTE_TENSOR_CORE           ? "tensor-core"
                       : note == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC    ? "NON-DETERMINISTIC"
                       : note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS ? "down-convert-inputs"
                       : note == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION
                           ? "reduced-precision-reduction"
                           : nullptr;
    text += text.empty() ? "" : ",";
    text += name != nullptr ? std::string(name) : concat("note ", static_cast<int>(note));
  }
  return text.empty() ? "none" : text;
}

// Asks the heuristics in `mode` for engine configs and plans the first that finalises (skipping
// engines marked non-deterministic for a deterministic backward); false when none does, with
// each config's reason added to `failures`.
bool plan_with_heuristics(const CudnnLibrary& lib, GraphBuilder& g, const CudnnDescriptor& graph,
                          cudnnHandle_t handle, const SdpaGraphSpec& spec,
                          cudnnBackendHeurMode_t mode, const char* mode_name, SdpaPlan& result,
                          std::string& failures,
                          const std::function<void(const std::string&)>& say) {
  CudnnDescriptor& heuristics =
      g.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, concat("heuristics (", mode_name, ")"));
  heuristics.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph)
      .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode)
      .finalize();
  std::int64_t available = 0;
  lib.check(lib.get_attribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &available, nullptr),
            concat("heuristics (", mode_name, "): count engine configs"));
  say(concat("heuristics (", mode_name, "): ", available, " engine configs"));
  if (available <= 0) {
    failures += concat(" [", mode_name, ": no engine config]");
    return false;
  }
  std::vector<CudnnDescriptor*> configs;
  std::vector<cudnnBackendDescriptor_t> raw_configs;
  for (std::int64_t i = 0; i < available; ++i) {
    configs.push_back(&g.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, concat("engine config ", i)));
    raw_configs.push_back(configs.back()->get());
  }
  std::int64_t returned = 0;
  lib.check(
      lib.get_attribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                        CUDNN_TYPE_BACKEND_DESCRIPTOR, available, &returned, raw_configs.data()),
      concat("heuristics (", mode_name, "): get engine configs"));
  // The order tried: METAMORPH_CUDNN_CONFIG's config first where set, then the heuristics' order.
  std::vector<std::int64_t> order;
  const std::int64_t preferred = cudnn_preferred_config();
  if (preferred >= 0 && preferred < std::min(returned, available)) order.push_back(preferred);
  for (std::int64_t i = 0; i < std::min(returned, available); ++i)
    if (i != preferred) order.push_back(i);
  for (const std::int64_t i : order) {
    const std::string name = concat(mode_name, " engine config ", i);
    try {
      const std::vector<cudnnBackendNumericalNote_t> notes = engine_notes(lib, g, *configs[i]);
      say(concat(name, ": numerical notes ", describe_notes(notes)));
      const bool nondeterministic = std::find(notes.begin(), notes.end(),
                                              CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) != notes.end();
      if (spec.backward && spec.deterministic && nondeterministic) {
        say(concat(name, ": skipped, its engine is marked non-deterministic"));
        failures += concat(" [", name, ": non-deterministic]");
        continue;
      }
      CudnnDescriptor& plan =
          g.make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, concat("execution plan of ", name));
      plan.set_handle(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle)
          .set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, *configs[i])
          .finalize();
      result.plan = &plan;
      result.workspace_bytes = plan.get_int64(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE);
      result.engine = concat(name, " of ", returned);
      say(concat("plan finalised with ", result.engine, ", workspace ", result.workspace_bytes,
                 " bytes"));
      return true;
    } catch (const CudnnError& e) {
      say(concat(name, ": ", e.what()));
      failures += concat(" [", name, ": ", e.what(), "]");
    }
  }
  return false;
}

}  // namespace

float sdpa_mask_value(const CudnnLibrary& lib) {
  return lib.version < 91000 ? std::numeric_limits<float>::lowest()
                             : -std::numeric_limits<float>::infinity();
}

std::unique_ptr<SdpaPlan> build_sdpa_plan(const CudnnLibrary& lib, cudnnHandle_t handle,
                                          const SdpaGraphSpec& spec,
                                          const std::function<void(const std::string&)>& trace) {
  auto say = [&](const std::string& line) {
    if (trace) trace(line);
  };
  auto result = std::make_unique<SdpaPlan>();
  GraphBuilder g(lib, *result);
  if (spec.backward)
    build_backward(g, spec, *result);
  else
    build_forward(g, spec);
  say(concat("graph built: ", g.ops().size(), " operations"));

  CudnnDescriptor& graph = g.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
  graph.set_descs(CUDNN_ATTR_OPERATIONGRAPH_OPS, g.ops());
  if (handle != nullptr) graph.set_handle(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, handle);
  graph.finalize();
  say("operation graph finalised");
  if (handle == nullptr) return result;  // checking the graph alone: no device to plan for

  // Mode A is what the frontend library asks for attention; the fallback list is tried only
  // when no config of mode A plans (its engines may be slow, but the log then says so).
  std::string failures;
  for (const auto& [mode, mode_name] : {std::pair{CUDNN_HEUR_MODE_A, "mode A"},
                                        std::pair{CUDNN_HEUR_MODE_FALLBACK, "fallback mode"}}) {
    if (plan_with_heuristics(lib, g, graph, handle, spec, mode, mode_name, *result, failures, say))
      return result;
  }
  throw CudnnError(concat("no engine config gave a plan:", failures));
}

}  // namespace metamorph::cuda
#endif
