// Attention of the CPU backend, flash-attention style: per (batch, head, query tile) the scores
// are computed only over the key spans the mask can allow (see attention_key_ranges.hpp), with
// OpenBLAS GEMMs for Q K^T, P V and their gradients; the backward pass recomputes the
// probabilities from the saved log-sum-exp instead of storing them.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/backends/cpu/attention_key_ranges.hpp"
#include "runtime/backends/cpu/cpu_backend.hpp"
#include "runtime/backends/cpu/fast_exp.hpp"
#include "runtime/core/error.hpp"

namespace metamorph {

namespace {

constexpr std::int64_t kQueryTile = 64;
// OpenBLAS runs a GEMM on the calling thread when m*n*k <= 4 * 65536. Key chunks are sized to
// stay under that, so GEMMs issued from OpenMP workers never contend for BLAS's own threads.
constexpr std::int64_t kSingleThreadGemmWork = 4 * 65536;
constexpr std::int64_t kMinKeyChunk = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Geometry {
  std::int64_t batch = 0, sq = 0, sk = 0, heads = 0, kv_heads = 0, dim = 0, group = 1;
  std::int64_t q_offset = 0;
  std::int64_t key_chunk = kMinKeyChunk;
  std::int64_t q_stride() const { return heads * dim; }
  std::int64_t kv_stride() const { return kv_heads * dim; }
  std::int64_t query_tiles() const { return (sq + kQueryTile - 1) / kQueryTile; }
};

Geometry geometry(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                  const Tensor& lse, const AttentionMask& mask, float scale,
                  std::int64_t q_offset) {
  MM_ASSERT(q.rank() == 4 && k.rank() == 4 && k.shape() == v.shape(),
            "attention wants q [b, sq, h, d], k/v [b, sk, hk, d]; got q ", shape_string(q.shape()),
            " k ", shape_string(k.shape()), " v ", shape_string(v.shape()));
  Geometry g;
  g.batch = q.dim(0);
  g.sq = q.dim(1);
  g.heads = q.dim(2);
  g.dim = q.dim(3);
  g.sk = k.dim(1);
  g.kv_heads = k.dim(2);
  MM_ASSERT(k.dim(0) == g.batch && k.dim(3) == g.dim && g.dim > 0, "attention q ",
            shape_string(q.shape()), " vs k ", shape_string(k.shape()));
  MM_ASSERT(out.shape() == q.shape() && lse.shape() == (Shape{g.batch, g.heads, g.sq}),
            "attention out ", shape_string(out.shape()), " lse ", shape_string(lse.shape()),
            " for q ", shape_string(q.shape()));
  require(g.kv_heads >= 1 && g.heads % g.kv_heads == 0, "attention query heads ", g.heads,
          " must be a multiple of the key/value heads ", g.kv_heads);
  require(q_offset >= 0, "attention query offset ", q_offset, " must be >= 0");
  require(std::isfinite(scale), "attention scale ", scale, " must be finite");
  validate_mask(mask);
  // BLAS takes int dimensions and leading dimensions; offsets are computed in 64 bits.
  MM_ASSERT(g.sk < INT_MAX && g.q_stride() < INT_MAX && g.kv_stride() < INT_MAX,
            "attention dimensions exceed BLAS int: q ", shape_string(q.shape()), " k ",
            shape_string(k.shape()));
  g.group = g.heads / g.kv_heads;
  g.q_offset = q_offset;
  g.key_chunk = std::max(kMinKeyChunk, kSingleThreadGemmWork / (kQueryTile * g.dim));
  return g;
}

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
          std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

// The score columns of one query tile: the hulls of its rows' allowed key ranges, laid side by
// side (span 0 then span 1), and each row's allowed columns within them.
struct TileColumns {
  KeyRange span[2];
  std::int64_t first_column[2] = {0, 0};
  std::int64_t cols = 0;
  std::int64_t rows = 0;
  std::vector<KeyRange> row_columns;  // row r: [2r] and [2r + 1]
  std::vector<AllowedKeys> row_keys;

  void plan(const AttentionMask& mask, const Geometry& g, std::int64_t q0, std::int64_t tile_rows) {
    rows = tile_rows;
    row_keys.resize(static_cast<std::size_t>(rows));
    row_columns.resize(static_cast<std::size_t>(2 * rows));
    KeyRange hull[2] = {{LLONG_MAX, LLONG_MIN}, {LLONG_MAX, LLONG_MIN}};
    auto extend = [](KeyRange& h, const KeyRange& r) {
      if (r.empty()) return;
      h.begin = std::min(h.begin, r.begin);
      h.end = std::max(h.end, r.end);
    };
    for (std::int64_t r = 0; r < rows; ++r) {
      AllowedKeys& keys = row_keys[static_cast<std::size_t>(r)];
      keys = allowed_keys(mask, g.q_offset + q0 + r, g.sk);
      extend(hull[0], keys.first);
      extend(hull[1], keys.second);
    }
    // Overlapping hulls would count keys twice; fold the second into the first.
    int second_hull = 1;
    if (!hull[0].empty() && !hull[1].empty() && hull[1].begin < hull[0].end &&
        hull[0].begin < hull[1].end) {
      extend(hull[0], hull[1]);
      hull[1] = KeyRange{};
      second_hull = 0;
    }
    for (int s = 0; s < 2; ++s) span[s] = hull[s].empty() ? KeyRange{} : hull[s];
    first_column[0] = 0;
    first_column[1] = span[0].size();
    cols = span[0].size() + span[1].size();
    auto to_columns = [&](const KeyRange& keys, int s) {
      if (keys.empty()) return KeyRange{};
      const std::int64_t shift = first_column[s] - span[s].begin;
      return KeyRange{keys.begin + shift, keys.end + shift};
    };
    for (std::int64_t r = 0; r < rows; ++r) {
      const AllowedKeys& keys = row_keys[static_cast<std::size_t>(r)];
      row_columns[static_cast<std::size_t>(2 * r)] = to_columns(keys.first, 0);
      row_columns[static_cast<std::size_t>(2 * r + 1)] = to_columns(keys.second, second_hull);
    }
  }

  // fn(column, key, count, row_begin, row_end) for every chunk of at most `chunk` consecutive
  // keys of the spans, with the rows [row_begin, row_end) that may see any of them; chunks no
  // row sees are skipped. This trims the triangle of causal diagonal tiles chunk by chunk.
  template <class Fn>
  void for_each_chunk(std::int64_t chunk, Fn&& fn) const {
    for (int s = 0; s < 2; ++s)
      for (std::int64_t key = span[s].begin; key < span[s].end; key += chunk) {
        const std::int64_t col = first_column[s] + key - span[s].begin;
        const std::int64_t n = std::min(chunk, span[s].end - key);
        std::int64_t row_begin = rows, row_end = 0;
        for (std::int64_t r = 0; r < rows; ++r) {
          const KeyRange& a = row_columns[static_cast<std::size_t>(2 * r)];
          const KeyRange& b = row_columns[static_cast<std::size_t>(2 * r + 1)];
          const bool sees =
              (a.begin < col + n && a.end > col) || (b.begin < col + n && b.end > col);
          if (sees) {
            row_begin = std::min(row_begin, r);
            row_end = r + 1;
          }
        }
        if (row_begin < row_end) fn(col, key, n, row_begin, row_end);
      }
  }
};

// Zeroes the columns of a score row outside the two allowed column ranges.
void zero_outside(float* row, std::int64_t cols, KeyRange a, KeyRange b) {
  if (a.empty()) a = KeyRange{cols, cols};
  if (b.empty()) b = KeyRange{cols, cols};
  if (b.begin < a.begin) std::swap(a, b);
  std::fill(row, row + a.begin, 0.0f);
  std::fill(row + std::min(a.end, b.begin), row + b.begin, 0.0f);
  std::fill(row + std::max(a.end, b.end), row + cols, 0.0f);
}

// Row softmax of scale * scores over the allowed columns, in place; returns the log-sum-exp,
// -inf (and a zero row) when nothing is allowed.
float softmax_row(float* row, std::int64_t cols, KeyRange a, KeyRange b, float scale) {
  float max = kNegInf;
  for (const KeyRange& r : {a, b})
    for (std::int64_t c = r.begin; c < r.end; ++c) max = std::max(max, row[c] * scale);
  if (max == kNegInf) {
    std::fill(row, row + cols, 0.0f);
    return kNegInf;
  }
  double sum = 0.0;
  for (const KeyRange& r : {a, b}) {
    exp_scaled_shifted(row + r.begin, r.size(), scale, max);
    sum += sum_in_double(row + r.begin, r.size());
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (const KeyRange& r : {a, b})
    for (std::int64_t c = r.begin; c < r.end; ++c) row[c] *= inv;
  zero_outside(row, cols, a, b);
  return max + static_cast<float>(std::log(sum));
}

// Probabilities exp(scale * s - lse) over the allowed columns, zero elsewhere.
void probabilities_row(float* row, std::int64_t cols, KeyRange a, KeyRange b, float scale,
                       float lse) {
  if (lse == kNegInf) {
    std::fill(row, row + cols, 0.0f);
    return;
  }
  for (const KeyRange& r : {a, b}) exp_scaled_shifted(row + r.begin, r.size(), scale, lse);
  zero_outside(row, cols, a, b);
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const AttentionMask& mask, float scale, Tensor& out, Tensor& lse,
                                   std::int64_t q_offset) {
  const Geometry g = geometry(q, k, v, out, lse, mask, scale, q_offset);
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  float* op = out.data<float>();
  float* lp = lse.data<float>();
  const std::int64_t tiles = g.query_tiles();
  const std::int64_t items = g.batch * g.heads * tiles;

#pragma omp parallel
  {
    std::vector<float> scores(
        static_cast<std::size_t>(kQueryTile * std::max<std::int64_t>(g.sk, 1)));
    TileColumns tile;
#pragma omp for schedule(dynamic)
    for (std::int64_t item = 0; item < items; ++item) {
      const std::int64_t t = item % tiles, hh = (item / tiles) % g.heads;
      const std::int64_t b = item / (tiles * g.heads);
      const std::int64_t q0 = t * kQueryTile, rows = std::min(kQueryTile, g.sq - q0);
      const std::int64_t kvh = hh / g.group;
      const float* q_tile = qp + ((b * g.sq + q0) * g.heads + hh) * g.dim;
      const float* k_head = kp + (b * g.sk * g.kv_heads + kvh) * g.dim;
      const float* v_head = vp + (b * g.sk * g.kv_heads + kvh) * g.dim;
      float* o_tile = op + ((b * g.sq + q0) * g.heads + hh) * g.dim;
      float* lse_tile = lp + (b * g.heads + hh) * g.sq + q0;

      tile.plan(mask, g, q0, rows);
      if (tile.cols == 0) {
        for (std::int64_t r = 0; r < rows; ++r) {
          std::fill(o_tile + r * g.q_stride(), o_tile + r * g.q_stride() + g.dim, 0.0f);
          lse_tile[r] = kNegInf;
        }
        continue;
      }
      float* s = scores.data();
      // Score entries a row cannot see stay unwritten; the softmax reads only allowed ones.
      tile.for_each_chunk(g.key_chunk, [&](std::int64_t col, std::int64_t key, std::int64_t n,
                                           std::int64_t r0, std::int64_t r1) {
        gemm(false, true, r1 - r0, n, g.dim, 1.0f, q_tile + r0 * g.q_stride(), g.q_stride(),
             k_head + key * g.kv_stride(), g.kv_stride(), 0.0f, s + r0 * tile.cols + col,
             tile.cols);
      });
      for (std::int64_t r = 0; r < rows; ++r)
        lse_tile[r] = softmax_row(s + r * tile.cols, tile.cols,
                                  tile.row_columns[static_cast<std::size_t>(2 * r)],
                                  tile.row_columns[static_cast<std::size_t>(2 * r + 1)], scale);
      for (std::int64_t r = 0; r < rows; ++r)
        std::fill(o_tile + r * g.q_stride(), o_tile + r * g.q_stride() + g.dim, 0.0f);
      tile.for_each_chunk(g.key_chunk, [&](std::int64_t col, std::int64_t key, std::int64_t n,
                                           std::int64_t r0, std::int64_t r1) {
        gemm(false, false, r1 - r0, g.dim, n, 1.0f, s + r0 * tile.cols + col, tile.cols,
             v_head + key * g.kv_stride(), g.kv_stride(), 1.0f, o_tile + r0 * g.q_stride(),
             g.q_stride());
      });
    }
  }
}

void CpuBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                    const AttentionMask& mask, float scale, Tensor& dq, Tensor& dk,
                                    Tensor& dv, std::int64_t q_offset) {
  const Geometry g = geometry(q, k, v, out, lse, mask, scale, q_offset);
  MM_ASSERT(dout.shape() == q.shape() && dq.shape() == q.shape() && dk.shape() == k.shape() &&
                dv.shape() == v.shape(),
            "attention_backward dout ", shape_string(dout.shape()), " dq ",
            shape_string(dq.shape()), " dk ", shape_string(dk.shape()), " dv ",
            shape_string(dv.shape()));
  const float* dop = dout.data<float>();
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  const float* op = out.data<float>();
  const float* lp = lse.data<float>();
  float* dqp = dq.data<float>();
  float* dkp = dk.data<float>();
  float* dvp = dv.data<float>();
  const std::int64_t tiles = g.query_tiles();
  // One task per (batch, kv head) owns that head's dk/dv and its group's dq, and accumulates in
  // a fixed order: no races, and gradients are bit-identical for any thread count.
  const std::int64_t items = g.batch * g.kv_heads;

#pragma omp parallel
  {
    const auto buffer = static_cast<std::size_t>(kQueryTile * std::max<std::int64_t>(g.sk, 1));
    std::vector<float> probs(buffer), dscores(buffer);
    TileColumns tile;
#pragma omp for schedule(dynamic)
    for (std::int64_t item = 0; item < items; ++item) {
      const std::int64_t b = item / g.kv_heads, kvh = item % g.kv_heads;
      const float* k_head = kp + (b * g.sk * g.kv_heads + kvh) * g.dim;
      const float* v_head = vp + (b * g.sk * g.kv_heads + kvh) * g.dim;
      float* dk_head = dkp + (b * g.sk * g.kv_heads + kvh) * g.dim;
      float* dv_head = dvp + (b * g.sk * g.kv_heads + kvh) * g.dim;
      for (std::int64_t j = 0; j < g.sk; ++j) {
        std::fill(dk_head + j * g.kv_stride(), dk_head + j * g.kv_stride() + g.dim, 0.0f);
        std::fill(dv_head + j * g.kv_stride(), dv_head + j * g.kv_stride() + g.dim, 0.0f);
      }
      for (std::int64_t t = 0; t < tiles; ++t) {
        const std::int64_t q0 = t * kQueryTile, rows = std::min(kQueryTile, g.sq - q0);
        tile.plan(mask, g, q0, rows);
        for (std::int64_t hh = kvh * g.group; hh < (kvh + 1) * g.group; ++hh) {
          const std::int64_t at = ((b * g.sq + q0) * g.heads + hh) * g.dim;
          const float* q_tile = qp + at;
          const float* do_tile = dop + at;
          const float* o_tile = op + at;
          float* dq_tile = dqp + at;
          const float* lse_tile = lp + (b * g.heads + hh) * g.sq + q0;
          if (tile.cols == 0) {
            for (std::int64_t r = 0; r < rows; ++r)
              std::fill(dq_tile + r * g.q_stride(), dq_tile + r * g.q_stride() + g.dim, 0.0f);
            continue;
          }
          float* p = probs.data();
          float* ds = dscores.data();
          const std::int64_t cols = tile.cols;
          tile.for_each_chunk(g.key_chunk, [&](std::int64_t col, std::int64_t key, std::int64_t n,
                                               std::int64_t r0, std::int64_t r1) {
            const std::int64_t m = r1 - r0;
            gemm(false, true, m, n, g.dim, 1.0f, q_tile + r0 * g.q_stride(), g.q_stride(),
                 k_head + key * g.kv_stride(), g.kv_stride(), 0.0f, p + r0 * cols + col, cols);
            gemm(false, true, m, n, g.dim, 1.0f, do_tile + r0 * g.q_stride(), g.q_stride(),
                 v_head + key * g.kv_stride(), g.kv_stride(), 0.0f, ds + r0 * cols + col, cols);
          });
          for (std::int64_t r = 0; r < rows; ++r) {
            const KeyRange a = tile.row_columns[static_cast<std::size_t>(2 * r)];
            const KeyRange c = tile.row_columns[static_cast<std::size_t>(2 * r + 1)];
            float* pr = p + r * cols;
            float* dsr = ds + r * cols;
            probabilities_row(pr, cols, a, c, scale, lse_tile[r]);
            // D_r = dO_r . O_r equals sum_j P_rj dP_rj, the softmax Jacobian's correction.
            double dot = 0.0;
            for (std::int64_t x = 0; x < g.dim; ++x)
              dot +=
                  static_cast<double>(do_tile[r * g.q_stride() + x]) * o_tile[r * g.q_stride() + x];
            const auto d_r = static_cast<float>(dot);
            // Only allowed entries were computed; the rest of the row is stale and zeroed.
            for (const KeyRange& range : {a, c})
              for (std::int64_t col = range.begin; col < range.end; ++col)
                dsr[col] = pr[col] * (dsr[col] - d_r);
            zero_outside(dsr, cols, a, c);
          }
          for (std::int64_t r = 0; r < rows; ++r)
            std::fill(dq_tile + r * g.q_stride(), dq_tile + r * g.q_stride() + g.dim, 0.0f);
          tile.for_each_chunk(g.key_chunk, [&](std::int64_t col, std::int64_t key, std::int64_t n,
                                               std::int64_t r0, std::int64_t r1) {
            const std::int64_t m = r1 - r0;
            const float* ds_chunk = ds + r0 * cols + col;
            gemm(false, false, m, g.dim, n, scale, ds_chunk, cols, k_head + key * g.kv_stride(),
                 g.kv_stride(), 1.0f, dq_tile + r0 * g.q_stride(), g.q_stride());
            gemm(true, false, n, g.dim, m, scale, ds_chunk, cols, q_tile + r0 * g.q_stride(),
                 g.q_stride(), 1.0f, dk_head + key * g.kv_stride(), g.kv_stride());
            gemm(true, false, n, g.dim, m, 1.0f, p + r0 * cols + col, cols,
                 do_tile + r0 * g.q_stride(), g.q_stride(), 1.0f, dv_head + key * g.kv_stride(),
                 g.kv_stride());
          });
        }
      }
    }
  }
}

}  // namespace metamorph
