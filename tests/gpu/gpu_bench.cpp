// Timings of the CUDA backend on the device it finds: bf16 GEMMs through the backend's cuBLASLt
// path, attention forward and backward, a device-to-device copy (the bandwidth ceiling), an
// MoE layer forward + backward next to a dense MLP of the same active FLOPs, and the experts'
// grouped GEMMs with and without side streams.
// CUDA events around each op, warm-up first, median of the repeats. Prints a table and one JSON
// line per figure. Usage: metamorph_gpu_bench [repeats] [grouped|memory]  (grouped: the grouped
// expert GEMMs alone; memory: the copy and the memory-bound kernels alone)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "models/expert_exchange.hpp"
#include "models/mlp.hpp"
#include "models/moe_block.hpp"
#include "runtime/backends/cpu/attention_key_ranges.hpp"
#include "runtime/backends/cuda/cuda_arena.hpp"
#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_device.hpp"
#include "runtime/backends/cuda/cuda_kernel_variants.hpp"
#include "runtime/backends/cuda/cuda_transfer.hpp"

namespace {
using namespace metamorph;

int repeats = 20;

// Median milliseconds of `op` over `repeats` runs, after 3 warm-up runs.
double median_ms(const std::function<void()>& op) {
  for (int i = 0; i < 3; ++i) op();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    cudaEventRecord(start, 0);
    op();
    cudaEventRecord(stop, 0);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    std::fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(status));
    std::exit(1);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

Tensor random_device(const Shape& shape, DType dtype, Arena& device) {
  Arena host;
  Tensor t = Tensor::empty(shape, DType::f32, host);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
  return cuda::to_device(t, device, dtype);
}

void report(const std::string& name, const std::string& shape, double ms, double tflops,
            double gbps) {
  std::printf("%-22s %-38s %9.3f ms %8.1f TFLOP/s %8.1f GB/s\n", name.c_str(), shape.c_str(), ms,
              tflops, gbps);
  std::printf(
      "JSON {\"op\": \"%s\", \"shape\": \"%s\", \"ms\": %.4f, \"tflops\": %.2f, \"gbps\": %.1f}\n",
      name.c_str(), shape.c_str(), ms, tflops, gbps);
}

// Largest |a - b| over two host f32 tensors of the same size (NaN where either holds one).
double max_abs_diff(const Tensor& a, const Tensor& b) {
  double worst = 0.0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]);
    if (!(d <= worst)) worst = d;
  }
  return worst;
}

Parameter* weight(ParameterSet& params, const std::string& name, const Shape& shape, Backend& gpu,
                  Arena& arena) {
  Parameter p;
  p.name = name;
  p.global_shape = shape;
  p.offset = Shape(shape.size(), 0);
  p.value = random_device(shape, DType::bf16, arena);
  // Scaled down so activations stay O(1) through the layer.
  gpu.scale(p.value, 0.02f);
  p.grad = gpu.zeros(shape);
  return &params.add(std::move(p));
}

// A Mixtral-like MoE layer scaled to one GPU (hidden 4096, 8 experts of FFN 14336, top-2,
// 8192 tokens, bf16) forward + backward through MoeBlock, next to a dense SwiGLU MLP of the same
// active FLOPs (FFN 2 x 14336). The experts run as one cuBLASLt GEMM per expert and projection,
// spread over the backend's expert streams (4), and once more one after another (_k1).
void bench_moe_layer(cuda::CudaBackend& gpu, Arena& arena) {
  const std::int64_t tokens = 8192, hidden = 4096, ffn = 14336, experts = 8, top_k = 2;
  ParameterSet params;
  MoeWeights w;
  w.router = weight(params, "router", {experts, hidden}, gpu, arena);
  for (std::int64_t e = 0; e < experts; ++e) {
    const std::string prefix = std::string("experts.") + std::to_string(e) + ".";
    w.experts.push_back({weight(params, prefix + "gate", {ffn, hidden}, gpu, arena),
                         weight(params, prefix + "up", {ffn, hidden}, gpu, arena),
                         weight(params, prefix + "down", {hidden, ffn}, gpu, arena)});
  }
  MoeConfig config;
  config.num_experts = experts;
  config.top_k = top_k;
  config.expert_intermediate_size = ffn;
  config.scoring = RouterScoring::topk_then_softmax;
  config.aux_loss_coef = 0.01;
  LocalExpertExchange exchange(experts);
  MoeBlock block(gpu, config, w, exchange);
  Tensor x = random_device({tokens, hidden}, DType::bf16, arena);
  Tensor dy = random_device({tokens, hidden}, DType::bf16, arena);
  // Active FLOPs: 3 GEMMs of 2 * h * f per routed row forward, twice that backward.
  const double active_flops = 3.0 * 2.0 * hidden * ffn * tokens * top_k;
  const double fwd_ms = median_ms([&] {
    block.forward(x);
    block.release();
  });
  const double step_ms = median_ms([&] {
    block.forward(x);
    block.backward(dy);
  });
  char shape[96];
  std::snprintf(shape, sizeof shape, "t%ld h%ld E%ld k%ld f%ld", static_cast<long>(tokens),
                static_cast<long>(hidden), static_cast<long>(experts), static_cast<long>(top_k),
                static_cast<long>(ffn));
  report("moe_layer_fwd_bf16", shape, fwd_ms, active_flops / fwd_ms / 1e9, 0.0);
  report("moe_layer_fwd_bwd_bf16", shape, step_ms, 3.0 * active_flops / step_ms / 1e9, 0.0);
  // The same layer with its experts one after another on the compute stream.
  const int streams = gpu.expert_streams();
  gpu.set_expert_streams(1);
  const double serial_step_ms = median_ms([&] {
    block.forward(x);
    block.backward(dy);
  });
  gpu.set_expert_streams(streams);
  report("moe_layer_fwd_bwd_bf16_k1", shape, serial_step_ms,
         3.0 * active_flops / serial_step_ms / 1e9, 0.0);
  params = ParameterSet();

  ParameterSet dense_params;
  const std::int64_t dense_ffn = ffn * top_k;
  MlpWeights dw{weight(dense_params, "gate", {dense_ffn, hidden}, gpu, arena),
                weight(dense_params, "up", {dense_ffn, hidden}, gpu, arena),
                weight(dense_params, "down", {hidden, dense_ffn}, gpu, arena)};
  SwiGluMlp mlp(gpu, dw);
  const double dense_fwd_ms = median_ms([&] {
    mlp.forward(x);
    mlp.release();
  });
  const double dense_step_ms = median_ms([&] {
    mlp.forward(x);
    mlp.backward(dy);
  });
  std::snprintf(shape, sizeof shape, "t%ld h%ld f%ld", static_cast<long>(tokens),
                static_cast<long>(hidden), static_cast<long>(dense_ffn));
  report("dense_mlp_fwd_bf16", shape, dense_fwd_ms, active_flops / dense_fwd_ms / 1e9, 0.0);
  report("dense_mlp_fwd_bwd_bf16", shape, dense_step_ms, 3.0 * active_flops / dense_step_ms / 1e9,
         0.0);
}

// The experts' grouped GEMMs at the MoE model's shapes (configs/mixtral-a1b.json: hidden 2048, 8
// experts of FFN 3584, balanced routing of 4096 tokens top-2 = 1024 rows per expert), whole and
// split by tensor parallelism (FFN 1792 per rank), bf16 with f32 weight gradients: each row once
// with the groups one after another on the compute stream (k1) and once spread over four side
// streams (k4), side by side, then the speed-up. "all" is the nine grouped calls of one MoE layer's
// forward and backward (MoeBlock's order).
void bench_grouped_expert_gemms(cuda::CudaBackend& gpu, Arena& arena) {
  const std::int64_t experts = 8, rows_per_expert = 1024, hidden = 2048;
  const std::int64_t rows = experts * rows_per_expert;
  const std::vector<std::int64_t> counts(static_cast<std::size_t>(experts), rows_per_expert);
  const int restore = gpu.expert_streams();
  for (const std::int64_t ffn : {std::int64_t{3584}, std::int64_t{1792}}) {
    std::vector<Tensor> gate, up, down, dgate, dup, ddown;
    for (std::int64_t e = 0; e < experts; ++e) {
      gate.push_back(random_device({ffn, hidden}, DType::bf16, arena));
      up.push_back(random_device({ffn, hidden}, DType::bf16, arena));
      down.push_back(random_device({hidden, ffn}, DType::bf16, arena));
      dgate.push_back(gpu.zeros({ffn, hidden}));
      dup.push_back(gpu.zeros({ffn, hidden}));
      ddown.push_back(gpu.zeros({hidden, ffn}));
    }
    auto values = [](std::vector<Tensor>& ts) {
      std::vector<const Tensor*> v;
      for (Tensor& t : ts) v.push_back(&t);
      return v;
    };
    auto grads = [](std::vector<Tensor>& ts) {
      std::vector<Tensor*> v;
      for (Tensor& t : ts) v.push_back(&t);
      return v;
    };
    const std::vector<const Tensor*> wg = values(gate), wu = values(up), wd = values(down);
    const std::vector<Tensor*> gg = grads(dgate), gu = grads(dup), gd = grads(ddown);
    Tensor x = random_device({rows, hidden}, DType::bf16, arena);
    Tensor dy = random_device({rows, hidden}, DType::bf16, arena);
    Tensor g = gpu.empty({rows, ffn}, DType::bf16), u = gpu.empty({rows, ffn}, DType::bf16);
    Tensor act = random_device({rows, ffn}, DType::bf16, arena);
    Tensor y = gpu.empty({rows, hidden}, DType::bf16), dx = gpu.empty({rows, hidden}, DType::bf16);
    // One GEMM of the layer: 2 * rows * hidden * ffn FLOPs.
    const double gemm = 2.0 * static_cast<double>(rows) * hidden * ffn;
    struct Op {
      const char* name;
      double flops;
      std::function<void()> run;
    };
    const std::vector<Op> ops = {
        {"fwd_gateup", 2 * gemm,
         [&] {
           gpu.grouped_matmul(x, wg, counts, true, g);
           gpu.grouped_matmul(x, wu, counts, true, u);
         }},
        {"fwd_down", gemm, [&] { gpu.grouped_matmul(act, wd, counts, true, y); }},
        {"dgrad_down", gemm, [&] { gpu.grouped_matmul(dy, wd, counts, false, act); }},
        {"dgrad_gateup", 2 * gemm,
         [&] {
           gpu.grouped_matmul(g, wg, counts, false, dx);
           gpu.grouped_matmul(u, wu, counts, false, dx, 1.0f, 1.0f);
         }},
        {"wgrad_gateup", 2 * gemm,
         [&] {
           gpu.grouped_matmul_weight_grad(g, x, counts, gg);
           gpu.grouped_matmul_weight_grad(u, x, counts, gu);
         }},
        {"wgrad_down", gemm, [&] { gpu.grouped_matmul_weight_grad(dy, act, counts, gd); }},
        {"all", 9 * gemm,
         [&] {
           gpu.grouped_matmul(x, wg, counts, true, g);
           gpu.grouped_matmul(x, wu, counts, true, u);
           gpu.grouped_matmul(act, wd, counts, true, y);
           gpu.grouped_matmul_weight_grad(dy, act, counts, gd);
           gpu.grouped_matmul(dy, wd, counts, false, act);
           gpu.grouped_matmul(g, wg, counts, false, dx);
           gpu.grouped_matmul(u, wu, counts, false, dx, 1.0f, 1.0f);
           gpu.grouped_matmul_weight_grad(g, x, counts, gg);
           gpu.grouped_matmul_weight_grad(u, x, counts, gu);
         }},
    };
    char shape[96];
    std::snprintf(shape, sizeof shape, "E%ld x %ld rows h%ld f%ld", static_cast<long>(experts),
                  static_cast<long>(rows_per_expert), static_cast<long>(hidden),
                  static_cast<long>(ffn));
    for (const Op& op : ops) {
      double ms[2] = {0.0, 0.0};
      for (int i = 0; i < 2; ++i) {
        const int streams = i == 0 ? 1 : 4;
        gpu.set_expert_streams(streams);
        ms[i] = median_ms(op.run);
        report(std::string("grouped_gemm_") + op.name + "_f" + std::to_string(ffn) + "_k" +
                   std::to_string(streams),
               shape, ms[i], op.flops / ms[i] / 1e9, 0.0);
      }
      std::printf("  speed-up of grouped_gemm_%s_f%ld with 4 expert streams: %.2fx\n", op.name,
                  static_cast<long>(ffn), ms[0] / ms[1]);
    }
  }
  gpu.set_expert_streams(restore);
}

// The memory-bound ops of a training step at the 1B model's shapes (16384 tokens, hidden 2048,
// FFN 5632, 16 heads of 128), bf16 activations: bytes moved (each tensor read or written once) over
// time, next to the device copy's bandwidth measured in the same run.
void bench_memory_bound(cuda::CudaBackend& gpu, Arena& arena, double copy_gbps) {
  const std::int64_t batch = 4, seq = 4096, tokens = batch * seq, hidden = 2048, ffn = 5632;
  const std::int64_t heads = 16, dim = 128;
  auto line = [&](const std::string& op, const std::string& shape, double ms, double bytes) {
    const double gbps = bytes / ms / 1e6;
    report(op, shape, ms, 0.0, gbps);
    std::printf("    %.0f%% of the copy bandwidth\n", 100.0 * gbps / copy_gbps);
  };
  // The same for the RMSNorm and RoPE kernels, each on its own: a kernel that fails to launch is
  // reported and the others still run. A variant's line (`family` and `variant` given) also goes
  // into the summary of the fastest variant per op and shape at the end.
  struct VariantFigure {
    std::string family, shape, variant;
    double percent;
  };
  std::vector<VariantFigure> variants;
  auto timed_line = [&](const std::string& op, const std::string& shape,
                        const std::function<void()>& run, double bytes,
                        const std::string& family = "", const std::string& variant = "") {
    try {
      const double ms = median_ms(run);
      line(op, shape, ms, bytes);
      if (!family.empty())
        variants.push_back({family, shape, variant, 100.0 * bytes / ms / 1e6 / copy_gbps});
    } catch (const std::exception& e) {
      std::printf("%-22s %-38s failed: %s\n", op.c_str(), shape.c_str(), e.what());
    }
  };
  const double act = 2.0;  // bytes per bf16 element
  Arena host;
  // RMSNorm at the 1B model's width (one warp per row forward) and at 4096 (a row over several
  // warps, as in 7B-class models), same bytes.
  for (const std::int64_t width : {hidden, std::int64_t{4096}}) {
    const std::int64_t rows = tokens * hidden / width;
    Tensor x = random_device({rows, width}, DType::bf16, arena);
    Tensor w = random_device({width}, DType::f32, arena);
    Tensor dy = random_device({rows, width}, DType::bf16, arena);
    Tensor y = gpu.empty({rows, width}, DType::bf16), dx = gpu.empty({rows, width}, DType::bf16);
    Tensor rstd = gpu.empty({rows}), dw = gpu.empty({width});
    gpu.fill(dw, 0.0f);
    const std::string shape =
        std::string("t") + std::to_string(rows) + " h" + std::to_string(width);
    const double n = static_cast<double>(rows * width);
    timed_line(
        "rmsnorm_fwd_bf16", shape, [&] { gpu.rmsnorm_forward(x, w, 1e-5f, y, rstd); },
        2 * n * act + 4.0 * rows);
    timed_line(
        "rmsnorm_bwd_bf16", shape, [&] { gpu.rmsnorm_backward(dy, x, w, rstd, dx, dw); },
        3 * n * act + 4.0 * rows);
    // Every kernel variant (cuda_kernel_variants.hpp), then how far each one's outputs lie from
    // the rows kernels' (a broken variant shows here without the op tests).
    for (cuda::RmsNormKernel kernel : cuda::kRmsNormKernels) {
      const std::string name = cuda::kernel_name(kernel);
      timed_line(
          "rmsnorm_fwd_bf16_" + name, shape,
          [&] { cuda::rmsnorm_forward_with(kernel, gpu, x, w, 1e-5f, y, rstd); },
          2 * n * act + 4.0 * rows, "rmsnorm_fwd_bf16", name);
      timed_line(
          "rmsnorm_bwd_bf16_" + name, shape,
          [&] { cuda::rmsnorm_backward_with(kernel, gpu, dy, x, w, rstd, dx, dw); },
          3 * n * act + 4.0 * rows, "rmsnorm_bwd_bf16", name);
    }
    Tensor outputs[std::size(cuda::kRmsNormKernels)][4];
    for (std::size_t k = 0; k < std::size(cuda::kRmsNormKernels); ++k) {
      const cuda::RmsNormKernel kernel = cuda::kRmsNormKernels[k];
      gpu.fill(dw, 0.0f);
      try {
        cuda::rmsnorm_forward_with(kernel, gpu, x, w, 1e-5f, y, rstd);
        cuda::rmsnorm_backward_with(kernel, gpu, dy, x, w, rstd, dx, dw);
      } catch (const std::exception& e) {
        std::printf("    %s failed: %s\n", cuda::kernel_name(kernel), e.what());
      }
      const Tensor* results[] = {&y, &rstd, &dx, &dw};
      for (int i = 0; i < 4; ++i) outputs[k][i] = cuda::to_host(*results[i], host, DType::f32);
      std::printf("    %s against rows: max |diff| y %.3g rstd %.3g dx %.3g dw %.3g\n",
                  cuda::kernel_name(kernel), max_abs_diff(outputs[k][0], outputs[0][0]),
                  max_abs_diff(outputs[k][1], outputs[0][1]),
                  max_abs_diff(outputs[k][2], outputs[0][2]),
                  max_abs_diff(outputs[k][3], outputs[0][3]));
    }
    if (width == hidden)
      line("axpy_bf16", shape, median_ms([&] { gpu.axpy(1.0f, x, y); }), 3 * n * act);
    // The residual add fused with the norm beside it, each next to the two ops it replaces, timed
    // in the same run. Bytes: forward x and r read, r and y written; backward dy, x and
    // residual_grad read, dx written (4 n act each), plus rstd and (backward) the weight terms.
    Tensor r = random_device({rows, width}, DType::bf16, arena);
    Tensor residual_grad = random_device({rows, width}, DType::bf16, arena);
    auto fused_line = [&](const std::string& op, const std::function<void()>& fused,
                          const std::function<void()>& separate, double bytes) {
      timed_line(op, shape, fused, bytes);
      try {
        std::printf("    separate: %.3f ms\n", median_ms(separate));
      } catch (const std::exception& e) {
        std::printf("    separate failed: %s\n", e.what());
      }
    };
    fused_line(
        "add_rmsnorm_fwd_bf16", [&] { gpu.add_rmsnorm_forward(x, r, w, 1e-5f, y, rstd); },
        [&] {
          gpu.axpy(1.0f, x, r);
          gpu.rmsnorm_forward(r, w, 1e-5f, y, rstd);
        },
        4 * n * act + 4.0 * rows);
    fused_line(
        "rmsnorm_bwd_add_bf16",
        [&] { gpu.rmsnorm_backward_add(dy, x, w, rstd, residual_grad, dx, dw); },
        [&] {
          gpu.rmsnorm_backward(dy, x, w, rstd, dx, dw);
          gpu.axpy(1.0f, residual_grad, dx);
        },
        4 * n * act + 4.0 * rows);
    // The fused backward of every warp kernel variant (training runs the default's).
    for (cuda::RmsNormKernel kernel : cuda::kRmsNormKernels) {
      if (kernel == cuda::RmsNormKernel::rows) continue;
      const std::string name = cuda::kernel_name(kernel);
      timed_line(
          "rmsnorm_bwd_add_bf16_" + name, shape,
          [&] {
            cuda::rmsnorm_backward_add_with(kernel, gpu, dy, x, w, rstd, residual_grad, dx, dw);
          },
          4 * n * act + 4.0 * rows, "rmsnorm_bwd_add_bf16", name);
    }
  }
  {
    Tensor x = random_device({batch, seq, heads, dim}, DType::bf16, arena);
    Tensor pos_host = Tensor::empty({seq}, DType::i32, host);
    for (std::int64_t i = 0; i < seq; ++i)
      pos_host.data<std::int32_t>()[i] = static_cast<std::int32_t>(i);
    Tensor positions = cuda::to_device(pos_host, arena, DType::i32);
    const double n = static_cast<double>(x.numel());
    timed_line(
        "rope_bf16", "b4 s4096 h16 d128", [&] { gpu.rope(x, positions, 10000.0f, false); },
        2 * n * act);
    for (cuda::RopeKernel kernel : cuda::kRopeKernels)
      timed_line(
          std::string("rope_bf16_") + cuda::kernel_name(kernel), "b4 s4096 h16 d128",
          [&] { cuda::rope_with(kernel, gpu, x, positions, 10000.0f, false); }, 2 * n * act,
          "rope_bf16", cuda::kernel_name(kernel));
    Tensor rotated[std::size(cuda::kRopeKernels)];
    for (std::size_t k = 0; k < std::size(cuda::kRopeKernels); ++k) {
      Tensor once = gpu.empty(x.shape(), DType::bf16);
      gpu.copy(x, once);
      try {
        cuda::rope_with(cuda::kRopeKernels[k], gpu, once, positions, 10000.0f, false);
      } catch (const std::exception& e) {
        std::printf("    %s failed: %s\n", cuda::kernel_name(cuda::kRopeKernels[k]), e.what());
      }
      rotated[k] = cuda::to_host(once, host, DType::f32);
      std::printf("    %s against table: max |diff| %.3g\n",
                  cuda::kernel_name(cuda::kRopeKernels[k]), max_abs_diff(rotated[k], rotated[0]));
    }
    // q and k of an attention layer in one pass (rope_qk: one table, one launch) next to the two
    // rope calls it replaces, at the bench shape (q and k alike) and at the 1B model's (b2 s4096,
    // 32 query heads and 4 KV heads of 64).
    struct QkShape {
      const char* name;
      std::int64_t b, s, hq, hk, d;
    };
    for (const QkShape& qk : {QkShape{"b4 s4096 h16+16 d128", batch, seq, heads, heads, dim},
                              QkShape{"b2 s4096 h32+4 d64", 2, seq, 32, 4, 64}}) {
      Tensor q = random_device({qk.b, qk.s, qk.hq, qk.d}, DType::bf16, arena);
      Tensor k = random_device({qk.b, qk.s, qk.hk, qk.d}, DType::bf16, arena);
      timed_line(
          "rope_qk_bf16", qk.name, [&] { gpu.rope_qk(q, k, positions, 10000.0f, false); },
          2.0 * static_cast<double>(q.numel() + k.numel()) * act);
      std::printf("    separate: %.3f ms\n", median_ms([&] {
                    gpu.rope(q, positions, 10000.0f, false);
                    gpu.rope(k, positions, 10000.0f, false);
                  }));
    }
  }
  // The fastest variant of each op and shape (the defaults live in cuda_kernel_variants.hpp).
  for (std::size_t i = 0; i < variants.size(); ++i) {
    bool first = true;
    for (std::size_t j = 0; j < i; ++j)
      first = first &&
              !(variants[j].family == variants[i].family && variants[j].shape == variants[i].shape);
    if (!first) continue;
    const VariantFigure* best = &variants[i];
    for (std::size_t j = i; j < variants.size(); ++j)
      if (variants[j].family == variants[i].family && variants[j].shape == variants[i].shape &&
          variants[j].percent > best->percent)
        best = &variants[j];
    std::printf("fastest %-18s %-20s %-18s %.0f%% of the copy bandwidth\n", best->family.c_str(),
                best->shape.c_str(), best->variant.c_str(), best->percent);
  }
  {
    Tensor gate = random_device({tokens, ffn}, DType::bf16, arena);
    Tensor up = random_device({tokens, ffn}, DType::bf16, arena);
    Tensor dout = random_device({tokens, ffn}, DType::bf16, arena);
    Tensor out = gpu.empty({tokens, ffn}, DType::bf16),
           dgate = gpu.empty({tokens, ffn}, DType::bf16),
           dup = gpu.empty({tokens, ffn}, DType::bf16);
    const double n = static_cast<double>(tokens * ffn);
    line("swiglu_fwd_bf16", "t16384 f5632", median_ms([&] { gpu.swiglu_forward(gate, up, out); }),
         3 * n * act);
    line("swiglu_bwd_bf16", "t16384 f5632",
         median_ms([&] { gpu.swiglu_backward(dout, gate, up, dgate, dup); }), 5 * n * act);
  }
  {
    // The loss of one micro-batch of the 1B model (2 x 4096 tokens, vocabulary 32000), bf16
    // logits: the forward reads them once, the backward reads them and writes dlogits in place.
    // Host waits included, as training calls them (the forward returns the loss sum).
    const std::int64_t rows = 8192, vocab = 32000;
    Tensor logits = random_device({rows, vocab}, DType::bf16, arena);
    Tensor dlogits = gpu.empty({rows, vocab}, DType::bf16), lse = gpu.empty({rows});
    Tensor ids = Tensor::empty({rows}, DType::i32, host);
    for (std::int64_t i = 0; i < rows; ++i)
      ids.data<std::int32_t>()[i] = static_cast<std::int32_t>((i * 7919) % vocab);
    Tensor targets = cuda::to_device(ids, arena, DType::i32);
    const double n = static_cast<double>(rows * vocab);
    const std::string shape = "t8192 v32000";
    timed_line(
        "cross_entropy_fwd_bf16", shape,
        [&] { gpu.cross_entropy_forward(logits, targets, -100, lse); }, n * act + 4.0 * rows);
    timed_line(
        "cross_entropy_bwd_bf16", shape,
        [&] { gpu.cross_entropy_backward(logits, targets, lse, -100, 1.0f, dlogits); },
        2 * n * act + 4.0 * rows);
  }
  {
    const std::int64_t n = std::int64_t{64} << 20;  // 64 Mi parameters, f32 master and moments
    Tensor p = random_device({n}, DType::f32, arena), g = random_device({n}, DType::f32, arena);
    Tensor m = gpu.empty({n}), v = gpu.empty({n});
    gpu.fill(m, 0.0f);
    gpu.fill(v, 0.0f);
    AdamWHyper hyper;
    hyper.step = 1;
    line("adamw_f32", "64 Mi params", median_ms([&] { gpu.adamw_step(p, g, m, v, hyper); }),
         7.0 * 4.0 * static_cast<double>(n));
  }
}

// Block diffusion's remainder (block_diffusion_local, the part the split leaves to our kernels)
// alone, forward and backward, on `ours` (a backend forced to our kernels).
void bench_block_diffusion_remainder(cuda::CudaBackend& ours, const AttentionMask& mask,
                                     float scale, const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& dout, const char* shape) {
  AttentionMask local = mask;
  local.kind = MaskKind::block_diffusion_local;
  Tensor out = ours.empty(q.shape(), DType::bf16), lse = ours.empty({q.dim(0), q.dim(2), q.dim(1)});
  Tensor dq = ours.empty(q.shape(), DType::bf16), dk = ours.empty(k.shape(), DType::bf16),
         dv = ours.empty(v.shape(), DType::bf16);
  const double fwd = median_ms([&] { ours.attention_forward(q, k, v, local, scale, out, lse, 0); });
  const double bwd = median_ms(
      [&] { ours.attention_backward(dout, q, k, v, out, lse, local, scale, dq, dk, dv, 0); });
  report("part_local_fwd_bf16", shape, fwd, 0.0, 0.0);
  report("part_local_bwd_bf16", shape, bwd, 0.0, 0.0);
}

// Our attention kernels and cuDNN's against each other (torch_baseline.py times PyTorch's).
void bench_attention(cuda::CudaBackend& gpu, cuda::CudaArena& arena) {
  // The backward also without determinism: dQ added up by float atomics. The plain rows time our
  // kernels; the `_cudnn` rows cuDNN's fused attention (cudnn_attention.hpp) where it loads and
  // takes the shape, in the same process on the same inputs.
  cuda::CudaBackend fast(arena, /*deterministic=*/false);
  const cuda::CudnnAttentionUse ours{false, false};
  gpu.set_cudnn_attention(ours);
  fast.set_cudnn_attention(ours);
  cuda::CudaBackend cudnn(arena, /*deterministic=*/true);
  cuda::CudaBackend cudnn_fast(arena, /*deterministic=*/false);
  // Causal and full at the usual shapes, and the block-diffusion pattern of training: [x_t; x_0]
  // of 2 x 2048 tokens (clean half from 2048), blocks of 16 and 64.
  struct Attn {
    std::int64_t batch, seq, heads, kv_heads, dim;
    MaskKind kind;
    std::int64_t block = 1;
  };
  for (const Attn& s :
       {Attn{4, 2048, 16, 16, 128, MaskKind::causal}, Attn{2, 4096, 16, 4, 128, MaskKind::causal},
        Attn{4, 2048, 16, 16, 128, MaskKind::full}, Attn{2, 4096, 32, 4, 64, MaskKind::causal},
        Attn{4, 4096, 16, 2, 64, MaskKind::causal},  // the 1B model's heads on one rank of tp2
        Attn{2, 4096, 16, 16, 128, MaskKind::block_diffusion, 16},
        Attn{2, 4096, 16, 16, 128, MaskKind::block_diffusion, 64}}) {
    const Shape qs{s.batch, s.seq, s.heads, s.dim}, ks{s.batch, s.seq, s.kv_heads, s.dim};
    Tensor q = random_device(qs, DType::bf16, arena), k = random_device(ks, DType::bf16, arena),
           v = random_device(ks, DType::bf16, arena), dout = random_device(qs, DType::bf16, arena);
    Tensor out = gpu.empty(qs, DType::bf16), lse = gpu.empty({s.batch, s.heads, s.seq});
    Tensor dq = gpu.empty(qs, DType::bf16), dk = gpu.empty(ks, DType::bf16),
           dv = gpu.empty(ks, DType::bf16);
    AttentionMask mask;
    mask.kind = s.kind;
    mask.block_size = s.block;
    mask.clean_offset = s.seq / 2;
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
    const double fwd_ms =
        median_ms([&] { gpu.attention_forward(q, k, v, mask, scale, out, lse, 0); });
    const double bwd_ms = median_ms(
        [&] { gpu.attention_backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv, 0); });
    const double atomic_bwd_ms = median_ms(
        [&] { fast.attention_backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv, 0); });
    // FLOPs by the usual convention: 4 b h s^2 d forward (halved when causal), 2.5x backward;
    // the block-diffusion mask counts its allowed query-key pairs exactly.
    double flops = 4.0 * s.batch * s.heads * s.seq * s.seq * s.dim;
    if (s.kind == MaskKind::causal) flops /= 2;
    if (s.kind == MaskKind::block_diffusion) {
      double pairs = 0;
      for (std::int64_t i = 0; i < s.seq; ++i) {
        const AllowedKeys keys = allowed_keys(mask, i, s.seq);
        pairs += static_cast<double>(keys.first.size() + keys.second.size());
      }
      flops = 4.0 * s.batch * s.heads * pairs * s.dim;
    }
    const char* kind = s.kind == MaskKind::causal ? "causal"
                       : s.kind == MaskKind::full ? "full"
                                                  : "block-diffusion";
    char shape[96];
    std::snprintf(
        shape, sizeof shape, "b%ld s%ld h%ld/%ld d%ld %s%s", static_cast<long>(s.batch),
        static_cast<long>(s.seq), static_cast<long>(s.heads), static_cast<long>(s.kv_heads),
        static_cast<long>(s.dim), kind,
        s.kind == MaskKind::block_diffusion ? (" B" + std::to_string(s.block)).c_str() : "");
    report("attention_fwd_bf16", shape, fwd_ms, flops / fwd_ms / 1e9, 0.0);
    report("attention_bwd_bf16", shape, bwd_ms, 2.5 * flops / bwd_ms / 1e9, 0.0);
    report("attention_bwd_atomic_dq", shape, atomic_bwd_ms, 2.5 * flops / atomic_bwd_ms / 1e9, 0.0);

    // cuDNN: the first call of a shape builds its plans, which the median's warm-up absorbs.
    // Block diffusion runs as cuDNN's two causal parts and our kernels' remainder.
    const cuda::CudnnAttentionCounts before = cudnn.cudnn_attention().counts();
    const cuda::CudnnAttentionCounts fast_before = cudnn_fast.cudnn_attention().counts();
    const double cudnn_fwd_ms =
        median_ms([&] { cudnn.attention_forward(q, k, v, mask, scale, out, lse, 0); });
    const double cudnn_bwd_ms = median_ms(
        [&] { cudnn.attention_backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv, 0); });
    const double cudnn_atomic_ms = median_ms([&] {
      cudnn_fast.attention_backward(dout, q, k, v, out, lse, mask, scale, dq, dk, dv, 0);
    });
    const cuda::CudnnAttentionCounts after = cudnn.cudnn_attention().counts();
    if (after.declined > before.declined ||
        cudnn_fast.cudnn_attention().counts().declined > fast_before.declined) {
      std::printf("attention %s: cuDNN declined (%s%s), no _cudnn rows\n", shape,
                  cudnn.cudnn_attention().last_reason().c_str(),
                  cudnn_fast.cudnn_attention().last_reason().c_str());
      continue;
    }
    if (s.kind == MaskKind::block_diffusion) {
      // The parts alone: our kernels on the remainder (block_diffusion_local), and one cuDNN
      // causal attention over a half (the other part is a block shorter).
      bench_block_diffusion_remainder(gpu, mask, scale, q, k, v, dout, shape);
      const Shape hq{s.batch, s.seq / 2, s.heads, s.dim}, hk{s.batch, s.seq / 2, s.kv_heads, s.dim};
      Tensor q2 = random_device(hq, DType::bf16, arena), k2 = random_device(hk, DType::bf16, arena),
             v2 = random_device(hk, DType::bf16, arena),
             do2 = random_device(hq, DType::bf16, arena);
      Tensor o2 = gpu.empty(hq, DType::bf16), l2 = gpu.empty({s.batch, s.heads, s.seq / 2});
      Tensor dq2 = gpu.empty(hq, DType::bf16), dk2 = gpu.empty(hk, DType::bf16),
             dv2 = gpu.empty(hk, DType::bf16);
      AttentionMask causal;
      const double half_fwd =
          median_ms([&] { cudnn.attention_forward(q2, k2, v2, causal, scale, o2, l2, 0); });
      const double half_bwd = median_ms([&] {
        cudnn.attention_backward(do2, q2, k2, v2, o2, l2, causal, scale, dq2, dk2, dv2, 0);
      });
      report("part_causal_half_fwd_cudnn", shape, half_fwd, 0.0, 0.0);
      report("part_causal_half_bwd_cudnn", shape, half_bwd, 0.0, 0.0);
    }
    report("attention_fwd_bf16_cudnn", shape, cudnn_fwd_ms, flops / cudnn_fwd_ms / 1e9, 0.0);
    report("attention_bwd_bf16_cudnn", shape, cudnn_bwd_ms, 2.5 * flops / cudnn_bwd_ms / 1e9, 0.0);
    report("attention_bwd_atomic_dq_cudnn", shape, cudnn_atomic_ms,
           2.5 * flops / cudnn_atomic_ms / 1e9, 0.0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) repeats = std::max(1, std::atoi(argv[1]));
  if (cuda::device_count() == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  std::printf("device: %s\n", cuda::describe_device(0).c_str());
  cuda::CudaArena arena;
  cuda::CudaBackend gpu(arena);
  if (argc > 2 && std::string(argv[2]) == "grouped") {
    bench_grouped_expert_gemms(gpu, arena);
    return 0;
  }
  if (argc > 2 && std::string(argv[2]) == "local") {
    // Block diffusion's remainder on our kernels alone (for a profiler), blocks of 16.
    const Shape qs{2, 4096, 16, 128};
    gpu.set_cudnn_attention(cuda::CudnnAttentionUse{false, false});
    bench_block_diffusion_remainder(
        gpu, AttentionMask{MaskKind::block_diffusion, 16, 2048}, 0.088f,
        random_device(qs, DType::bf16, arena), random_device(qs, DType::bf16, arena),
        random_device(qs, DType::bf16, arena), random_device(qs, DType::bf16, arena),
        "b2 s4096 h16/16 d128 B16");
    return 0;
  }
  if (argc > 2 && std::string(argv[2]) == "attention") {
    bench_attention(gpu, arena);
    return 0;
  }
  double copy_gbps = 0.0;

  {
    const std::int64_t n = std::int64_t{1} << 28;  // 1 GiB of bytes each way
    Tensor a = gpu.empty({n / 4}), b = gpu.empty({n / 4});
    gpu.fill(a, 1.0f);
    const double ms = median_ms([&] { gpu.copy(a, b); });
    copy_gbps = 2.0 * static_cast<double>(n) / ms / 1e6;
    report("d2d_copy", "1 GiB", ms, 0.0, copy_gbps);
  }
  bench_memory_bound(gpu, arena, copy_gbps);
  if (argc > 2 && std::string(argv[2]) == "memory") return 0;

  struct Gemm {
    std::int64_t m, n, k;
  };
  for (const Gemm& s : {Gemm{4096, 4096, 4096}, Gemm{8192, 8192, 8192}, Gemm{16384, 5632, 2048},
                        Gemm{16384, 2048, 5632}}) {
    for (DType out : {DType::bf16, DType::f32}) {
      Tensor a = random_device({s.m, s.k}, DType::bf16, arena);
      Tensor b = random_device({s.n, s.k}, DType::bf16, arena);  // weights [out, in]: x W^T
      Tensor c = gpu.empty({s.m, s.n}, out);
      const double ms = median_ms([&] { gpu.matmul(a, false, b, true, c, 1.0f, 0.0f); });
      const double flops = 2.0 * s.m * s.n * s.k;
      char shape[64];
      std::snprintf(shape, sizeof shape, "%ldx%ldx%ld", static_cast<long>(s.m),
                    static_cast<long>(s.n), static_cast<long>(s.k));
      report(std::string("matmul_bf16_to_") + dtype_name(out), shape, ms, flops / ms / 1e9, 0.0);
    }
  }

  bench_attention(gpu, arena);
  bench_moe_layer(gpu, arena);
  bench_grouped_expert_gemms(gpu, arena);
  std::printf("arena peak %.1f MiB\n", static_cast<double>(arena.peak_bytes()) / (1 << 20));
  return 0;
}
