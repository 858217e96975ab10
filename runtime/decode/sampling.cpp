#include "runtime/decode/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/rng/philox.hpp"

namespace metamorph::decode {

void validate(const SamplingOptions& options) {
  require(std::isfinite(options.temperature) && options.temperature >= 0.0, "--temperature ",
          options.temperature, " must be >= 0 (0 is greedy)");
  require(options.top_p > 0.0 && options.top_p <= 1.0, "--top-p ", options.top_p,
          " must be in (0, 1]");
}

Choice choose_token(const float* logits, std::int64_t vocab, const SamplingOptions& options,
                    std::uint64_t draw, std::int32_t excluded) {
  MM_ASSERT(vocab > (excluded >= 0 ? 1 : 0), "sampling from a vocabulary of ", vocab);
  const double temperature = options.temperature > 0.0 ? options.temperature : 1.0;
  std::vector<double> p(static_cast<std::size_t>(vocab));
  double max = -std::numeric_limits<double>::infinity();
  for (std::int64_t v = 0; v < vocab; ++v)
    if (v != excluded) max = std::max(max, logits[v] / temperature);
  double sum = 0.0;
  for (std::int64_t v = 0; v < vocab; ++v) {
    const auto at = static_cast<std::size_t>(v);
    p[at] = v == excluded ? 0.0 : std::exp(logits[v] / temperature - max);
    sum += p[at];
  }
  for (double& x : p) x /= sum;
  if (options.temperature == 0.0) {
    const auto best = std::max_element(p.begin(), p.end()) - p.begin();
    return {static_cast<std::int32_t>(best), p[static_cast<std::size_t>(best)]};
  }
  // Nucleus: tokens by decreasing probability until the mass reaches top_p, then renormalise.
  std::vector<std::int32_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)];
  });
  std::size_t keep = 0;
  double mass = 0.0;
  while (keep < order.size() && (keep == 0 || mass < options.top_p)) {
    mass += p[static_cast<std::size_t>(order[keep])];
    ++keep;
  }
  const double u = rng::Stream(options.seed, "decode.sample").uniform(draw) * mass;
  double acc = 0.0;
  for (std::size_t i = 0; i < keep; ++i) {
    const std::int32_t token = order[i];
    acc += p[static_cast<std::size_t>(token)];
    if (u < acc || i + 1 == keep) return {token, p[static_cast<std::size_t>(token)]};
  }
  return {order[0], p[static_cast<std::size_t>(order[0])]};
}

}  // namespace metamorph::decode
