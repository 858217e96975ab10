#include "runtime/transforms/logit_deviation.hpp"

#include <algorithm>
#include <cmath>

#include "models/transformer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"

namespace metamorph {

double logit_deviation(Backend& backend, const ModelConfig& from, ParameterSet& source,
                       const ModelConfig& to, ParameterSet& transformed, const Tensor& tokens) {
  Transformer before(backend, from, source);
  Transformer after(backend, to, transformed);
  const Tensor a = before.logits(tokens);
  const Tensor b = after.logits(tokens);
  MM_ASSERT(a.numel() == b.numel());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(pb[i]) - pa[i]));
    scale = std::max(scale, std::abs(static_cast<double>(pa[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

Tensor probe_tokens(Backend& backend, std::int64_t vocab, std::int64_t batch, std::int64_t seq,
                    std::uint64_t seed) {
  Tensor tokens = backend.empty({batch, seq}, DType::i32);
  // The purpose string predates upcycle; kept so recorded grow deviations stay reproducible.
  const rng::Stream stream(seed, "grow.probe");
  auto* ids = tokens.data<std::int32_t>();
  for (std::int64_t i = 0; i < batch * seq; ++i)
    ids[i] = static_cast<std::int32_t>(stream.bits(static_cast<std::uint64_t>(i))[0] %
                                       static_cast<std::uint64_t>(vocab));
  return tokens;
}

}  // namespace metamorph
