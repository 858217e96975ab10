// The first thing to run on a GPU machine for cuDNN's fused attention: loads libcudnn.so.9 (as
// the backend does, by dlopen), prints its version and file, builds the forward and both
// backward graphs (deterministic and not) for one shape with every step printed, runs them
// once, prints the largest difference from our own kernels on the same inputs, then rough
// timings of both paths and the arena peak (cuDNN's workspace and scratch included).
//
//   cudnn_probe [batch seq heads kv_heads head_dim causal|full]   (default 1 256 4 2 128 causal)
//
// Exit status 0: every call ran on cuDNN and matched ours; 1: cuDNN declined or differed;
// 2: cuDNN did not load; 3: no GPU.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "runtime/backends/cuda/cuda_arena.hpp"
#include "runtime/backends/cuda/cuda_backend.hpp"
#include "runtime/backends/cuda/cuda_device.hpp"
#include "runtime/backends/cuda/cudnn_library.hpp"

namespace {

using namespace metamorph;

Tensor random_bf16(cuda::CudaBackend& gpu, const Shape& shape, std::mt19937& rng, float lo,
                   float hi) {
  Tensor host = gpu.host_empty(shape, DType::f32);
  std::uniform_real_distribution<float> dist(lo, hi);
  float* p = host.data<float>();
  for (std::int64_t i = 0; i < host.numel(); ++i) p[i] = dist(rng);
  return gpu.from_host(host, DType::bf16);
}

// max |a - b| / max |b| over all elements (host copies in f32).
double relative_max_error(cuda::CudaBackend& gpu, const Tensor& a, const Tensor& b) {
  Tensor ha = gpu.to_host(a, DType::f32), hb = gpu.to_host(b, DType::f32);
  double diff = 0.0, scale = 0.0;
  const float* pa = ha.data<float>();
  const float* pb = hb.data<float>();
  for (std::int64_t i = 0; i < ha.numel(); ++i) {
    if (!std::isfinite(pa[i]) || !std::isfinite(pb[i])) return INFINITY;
    diff = std::max(diff, std::fabs(static_cast<double>(pa[i]) - pb[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(pb[i])));
  }
  return scale > 0.0 ? diff / scale : diff;
}

}  // namespace

int main(int argc, char** argv) {
  // Before the first cuDNN call: our step log, and cuDNN's own warnings on stderr.
  setenv("METAMORPH_CUDNN_LOG", "1", 0);
  std::int64_t b = 1, s = 256, h = 4, hk = 2, d = 128;
  bool causal = true;
  if (argc == 7) {
    b = std::atol(argv[1]);
    s = std::atol(argv[2]);
    h = std::atol(argv[3]);
    hk = std::atol(argv[4]);
    d = std::atol(argv[5]);
    causal = std::string(argv[6]) != "full";
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: %s [batch seq heads kv_heads head_dim causal|full]\n", argv[0]);
    return 1;
  }
  const cuda::CudnnLibrary* lib = cuda::cudnn_library();
  if (lib == nullptr) {
    std::printf("cuDNN: not loaded: %s\n", cuda::cudnn_load_error().c_str());
    return 2;
  }
  std::printf("cuDNN: version %zu from %s\n", lib->version, lib->path.c_str());
  if (cuda::device_count() == 0) {
    std::printf("no CUDA device visible\n");
    return 3;
  }
  std::printf("shape: b%ld s%ld h%ld/%ld d%ld %s, bf16\n", static_cast<long>(b),
              static_cast<long>(s), static_cast<long>(h), static_cast<long>(hk),
              static_cast<long>(d), causal ? "causal" : "full");

  cuda::CudaArena arena;
  cuda::CudaBackend exact(arena, /*deterministic=*/true);
  cuda::CudaBackend fast(arena, /*deterministic=*/false);
  cuda::CudaBackend ours(arena, /*deterministic=*/true);
  exact.cudnn_attention().set_trace(true);
  fast.cudnn_attention().set_trace(true);
  fast.set_cudnn_attention({false, true});
  ours.set_cudnn_attention({false, false});

  std::mt19937 rng(7);
  const Shape qs{b, s, h, d}, ks{b, s, hk, d}, ls{b, h, s};
  Tensor q = random_bf16(ours, qs, rng, -2.0f, 2.0f), k = random_bf16(ours, ks, rng, -2.0f, 2.0f),
         v = random_bf16(ours, ks, rng, -1.0f, 1.0f),
         dout = random_bf16(ours, qs, rng, -1.0f, 1.0f);
  AttentionMask mask;
  mask.kind = causal ? MaskKind::causal : MaskKind::full;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  auto run = [&](cuda::CudaBackend& gpu, const char* name, Tensor& out, Tensor& lse, Tensor& dq,
                 Tensor& dk, Tensor& dv, const Tensor* given_out, const Tensor* given_lse) {
    std::printf("--- %s\n", name);
    std::fflush(stdout);
    if (given_out == nullptr) gpu.attention_forward(q, k, v, mask, scale, out, lse, 0);
    gpu.attention_backward(dout, q, k, v, given_out ? *given_out : out,
                           given_lse ? *given_lse : lse, mask, scale, dq, dk, dv, 0);
    gpu.synchronize();
    const cuda::CudnnAttentionCounts n = gpu.cudnn_attention().counts();
    std::printf("%s: cuDNN ran %ld forward, %ld backward; declined %ld%s%s\n", name,
                static_cast<long>(n.forward), static_cast<long>(n.backward),
                static_cast<long>(n.declined), n.declined ? ": " : "",
                gpu.cudnn_attention().last_reason().c_str());
    return n;
  };
  auto tensors = [&] {
    struct Set {
      Tensor out, lse, dq, dk, dv;
    };
    return Set{exact.empty(qs, DType::bf16), exact.empty(ls), exact.empty(qs, DType::bf16),
               exact.empty(ks, DType::bf16), exact.empty(ks, DType::bf16)};
  };
  auto ref = tensors();
  run(ours, "our kernels", ref.out, ref.lse, ref.dq, ref.dk, ref.dv, nullptr, nullptr);
  auto det = tensors();
  const auto n_det = run(exact, "cuDNN forward + deterministic backward", det.out, det.lse, det.dq,
                         det.dk, det.dv, nullptr, nullptr);
  auto nondet = tensors();
  const auto n_fast = run(fast, "cuDNN non-deterministic backward (on our forward)", nondet.out,
                          nondet.lse, nondet.dq, nondet.dk, nondet.dv, &ref.out, &ref.lse);

  // bf16 outputs: a few units of 2^-8 relative to the largest value is rounding.
  const double bound = 2e-2;
  bool ok = n_det.forward == 1 && n_det.backward == 1 && n_fast.backward == 1;
  auto report = [&](const char* what, const Tensor& a, const Tensor& b) {
    const double e = relative_max_error(ours, a, b);
    const bool good = e < bound;
    ok = ok && good;
    std::printf("  %-40s max |diff| / max |ours| = %.3g%s\n", what, e,
                good ? "" : "  <-- too large");
  };
  std::printf("--- against our kernels\n");
  report("out (cuDNN forward)", det.out, ref.out);
  report("lse (cuDNN stats)", det.lse, ref.lse);
  report("dq (deterministic backward)", det.dq, ref.dq);
  report("dk (deterministic backward)", det.dk, ref.dk);
  report("dv (deterministic backward)", det.dv, ref.dv);
  report("dq (non-deterministic backward)", nondet.dq, ref.dq);
  report("dk (non-deterministic backward)", nondet.dk, ref.dk);
  report("dv (non-deterministic backward)", nondet.dv, ref.dv);

  // Rough timings (median of 10 after 2 warm-ups, host clock around a synchronize); the bench
  // gives the reported figures.
  auto median_ms = [&](cuda::CudaBackend& gpu, const std::function<void()>& op) {
    std::vector<double> ms;
    for (int i = 0; i < 12; ++i) {
      gpu.synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      op();
      gpu.synchronize();
      const auto t1 = std::chrono::steady_clock::now();
      if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  std::printf("--- timings (ms, median of 10)\n");
  const double ours_fwd =
      median_ms(ours, [&] { ours.attention_forward(q, k, v, mask, scale, ref.out, ref.lse, 0); });
  const double ours_bwd = median_ms(ours, [&] {
    ours.attention_backward(dout, q, k, v, ref.out, ref.lse, mask, scale, ref.dq, ref.dk, ref.dv,
                            0);
  });
  const double cudnn_fwd =
      median_ms(exact, [&] { exact.attention_forward(q, k, v, mask, scale, det.out, det.lse, 0); });
  const double cudnn_bwd = median_ms(exact, [&] {
    exact.attention_backward(dout, q, k, v, det.out, det.lse, mask, scale, det.dq, det.dk, det.dv,
                             0);
  });
  const double cudnn_fast_bwd = median_ms(fast, [&] {
    fast.attention_backward(dout, q, k, v, det.out, det.lse, mask, scale, nondet.dq, nondet.dk,
                            nondet.dv, 0);
  });
  std::printf("  ours:  forward %.3f  backward %.3f\n", ours_fwd, ours_bwd);
  std::printf("  cuDNN: forward %.3f  backward %.3f (deterministic graph), %.3f (accumulator)\n",
              cudnn_fwd, cudnn_bwd, cudnn_fast_bwd);
  if (exact.cudnn_attention().counts().declined + fast.cudnn_attention().counts().declined > 0)
    std::printf("  (cuDNN declined some calls: those timings are of our kernels)\n");
  std::printf("  arena peak %.1f MiB\n", static_cast<double>(arena.peak_bytes()) / (1 << 20));
  std::printf("%s\n", ok ? "PROBE OK" : "PROBE FAILED");
  std::fflush(stdout);
  return ok ? 0 : 1;
}
