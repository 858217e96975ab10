// Rotary position embedding of the CPU backend, Hugging Face Llama "rotate_half" layout: the
// first and second halves of each head's vector form the (real, imaginary) pairs.
#include <cmath>
#include <vector>

#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

void CpuBackend::rope(Tensor& x, const Tensor& positions, float theta, bool inverse) {
  MM_ASSERT(x.rank() == 4, "rope wants x [batch, seq, heads, head_dim], got ",
            shape_string(x.shape()));
  const std::int64_t batch = x.dim(0), seq = x.dim(1), heads = x.dim(2), dim = x.dim(3);
  MM_ASSERT(positions.numel() == seq, "rope positions ", shape_string(positions.shape()),
            " for seq ", seq);
  require(dim % 2 == 0, "rotary embedding needs an even head_dim, got ", dim);
  require(std::isfinite(theta) && theta > 0.0f, "rope_theta ", theta, " must be positive");
  const std::int64_t half = dim / 2;
  const auto* pos = positions.data<std::int32_t>();

  // Angles in double: float32 pos * inv_freq loses ~1e-4 rad at positions in the thousands.
  std::vector<float> cos_table(static_cast<std::size_t>(seq * half));
  std::vector<float> sin_table(cos_table.size());
  for (std::int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(static_cast<double>(theta),
                                     -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    for (std::int64_t s = 0; s < seq; ++s) {
      const double angle = static_cast<double>(pos[s]) * inv_freq;
      cos_table[static_cast<std::size_t>(s * half + i)] = static_cast<float>(std::cos(angle));
      sin_table[static_cast<std::size_t>(s * half + i)] = static_cast<float>(std::sin(angle));
    }
  }

  // The inverse (= transpose) rotation is the same rotation by -angle.
  const float sign = inverse ? -1.0f : 1.0f;
  float* xp = x.data<float>();
  const std::int64_t rows = batch * seq;
#pragma omp parallel for if (rows * heads * dim > 32768)
  for (std::int64_t row = 0; row < rows; ++row) {
    const std::int64_t s = row % seq;
    const float* c = cos_table.data() + s * half;
    const float* sn = sin_table.data() + s * half;
    for (std::int64_t hh = 0; hh < heads; ++hh) {
      float* v = xp + (row * heads + hh) * dim;
      for (std::int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half], sin_i = sign * sn[i];
        v[i] = a * c[i] - b * sin_i;
        v[i + half] = b * c[i] + a * sin_i;
      }
    }
  }
}

}  // namespace metamorph
