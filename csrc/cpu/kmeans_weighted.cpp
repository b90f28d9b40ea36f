// CPU kernels of quantnoise::kmeans_assign_weighted and quantnoise::kmeans_update_weighted
// (activation-aware k-means, issue 10; arithmetic in quantnoise/kmeans_weighted.h).
//
// Assignment: score(x, c) = 0.5 c^T H c - x^T (H c) is kmeans_assign's score with the codebook
// H c. A task takes one group g (one H) and a tile of its points (n = g, g + G, ...): it computes
// the transposed codebook hct[e][k] = (H c_k)_e and half norms q[k] once (K*D^2 FMAs, small next to
// the tile's K*D per point), then scores P points x 8 centroids per step in registers: AVX2
// intrinsics (which the avx512 path runs too), and a portable body of the same steps. Both compute
// the same fmaf chains in the same order, so every path gives the same codes.
#include "quantnoise/kmeans_weighted.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/kmeans_weighted_host.h"

#if defined(QN_X86)
#include <immintrin.h>
#endif

namespace quantnoise {
namespace {

constexpr int64_t kLanes = 8;   // centroids scored per step (one AVX2 vector)
constexpr int64_t kPoints = 4;  // points in flight per step (independent FMA chains)
constexpr int64_t kTile = 256;  // points of one group per task

// One group's codebook: hct[e * kp + k] = (H c_k)_e, q[k] = 0.5 c_k^T H c_k (+inf for padding).
struct WeightedCodebook {
  std::vector<float> hct, q;
  int64_t kp = 0;
};

[[gnu::always_inline]] inline void build_codebook_body(const float* hg, const float* c, int64_t k, int64_t dim,
                                                       bool diag, WeightedCodebook& cb) {
  cb.kp = (k + kLanes - 1) / kLanes * kLanes;
  cb.hct.assign(static_cast<size_t>(dim * cb.kp), 0.0f);
  cb.q.assign(static_cast<size_t>(cb.kp), std::numeric_limits<float>::infinity());
  std::vector<float> hc(static_cast<size_t>(dim));
  for (int64_t j = 0; j < k; ++j) {
    const float* cj = c + j * dim;
    for (int64_t e = 0; e < dim; ++e) hc[e] = kmeans_weighted_hc(hg, cj, e, dim, diag);
    cb.q[j] = kmeans_weighted_half_norm(cj, hc.data(), dim);
    for (int64_t e = 0; e < dim; ++e) cb.hct[e * cb.kp + j] = hc[e];
  }
}

// The exact weighted distance of each point of a tile to its chosen centroid.
[[gnu::always_inline]] inline void distances_body(const float* hg, const float* x, int64_t m, int64_t dim,
                                                  const float* c, const int32_t* codes, bool diag, float* dist) {
  for (int64_t i = 0; i < m; ++i) dist[i] = kmeans_weighted_distance(hg, x + i * dim, c + codes[i] * dim, dim, diag);
}

// The codebook and the distances hold fmaf chains: compiled twice so that fmaf is one instruction
// where the CPU has FMA (a libm call otherwise); the same values either way.
#if defined(QN_X86)
QN_TARGET_AVX2 void build_codebook_fma(const float* hg, const float* c, int64_t k, int64_t dim, bool diag,
                                       WeightedCodebook& cb) {
  build_codebook_body(hg, c, k, dim, diag, cb);
}
QN_TARGET_AVX2 void distances_fma(const float* hg, const float* x, int64_t m, int64_t dim, const float* c,
                                  const int32_t* codes, bool diag, float* dist) {
  distances_body(hg, x, m, dim, c, codes, diag, dist);
}
#endif
void build_codebook(CpuIsa isa, const float* hg, const float* c, int64_t k, int64_t dim, bool diag,
                    WeightedCodebook& cb) {
#if defined(QN_X86)
  if (isa != CpuIsa::kPortable) return build_codebook_fma(hg, c, k, dim, diag, cb);
#endif
  build_codebook_body(hg, c, k, dim, diag, cb);
}
void distances(CpuIsa isa, const float* hg, const float* x, int64_t m, int64_t dim, const float* c,
               const int32_t* codes, bool diag, float* dist) {
#if defined(QN_X86)
  if (isa != CpuIsa::kPortable) return distances_fma(hg, x, m, dim, c, codes, diag, dist);
#endif
  distances_body(hg, x, m, dim, c, codes, diag, dist);
}

// Codes of P points x[P][dim]: fixed-size lane loops the compiler turns into vector FMAs, blends and
// compares for the target it is compiled for. Strict < per lane keeps the lowest k among equal
// scores; the final reduction takes the lowest index among the lanes holding the minimum.
template <int P>
[[gnu::always_inline]] inline void argmin_body(const float* x, int64_t dim, const WeightedCodebook& cb, int32_t* out) {
  float best[P][kLanes];
  int32_t idx[P][kLanes];
  for (int p = 0; p < P; ++p) {
    for (int l = 0; l < kLanes; ++l) {
      best[p][l] = std::numeric_limits<float>::infinity();
      idx[p][l] = 0;
    }
  }
  for (int64_t kb = 0; kb < cb.kp; kb += kLanes) {
    float acc[P][kLanes];
    for (int p = 0; p < P; ++p) {
      for (int l = 0; l < kLanes; ++l) acc[p][l] = cb.q[kb + l];
    }
    for (int64_t e = 0; e < dim; ++e) {
      const float* row = cb.hct.data() + e * cb.kp + kb;
      for (int p = 0; p < P; ++p) {
        const float xe = -x[p * dim + e];
        for (int l = 0; l < kLanes; ++l) acc[p][l] = fmaf(xe, row[l], acc[p][l]);
      }
    }
    for (int p = 0; p < P; ++p) {
      for (int l = 0; l < kLanes; ++l) {
        const bool lt = acc[p][l] < best[p][l];
        best[p][l] = lt ? acc[p][l] : best[p][l];
        idx[p][l] = lt ? static_cast<int32_t>(kb + l) : idx[p][l];
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    float mn = best[p][0];
    for (int l = 1; l < kLanes; ++l) mn = best[p][l] < mn ? best[p][l] : mn;
    int32_t code = std::numeric_limits<int32_t>::max();
    for (int l = 0; l < kLanes; ++l) code = (best[p][l] == mn && idx[p][l] < code) ? idx[p][l] : code;
    out[p] = code;
  }
}

[[gnu::always_inline]] inline void argmin_points_body(const float* x, int64_t m, int64_t dim,
                                                      const WeightedCodebook& cb, int32_t* out) {
  int64_t i = 0;
  for (; i + kPoints <= m; i += kPoints) argmin_body<kPoints>(x + i * dim, dim, cb, out + i);
  for (; i < m; ++i) argmin_body<1>(x + i * dim, dim, cb, out + i);
}

void argmin_portable(const float* x, int64_t m, int64_t dim, const WeightedCodebook& cb, int32_t* out) {
  argmin_points_body(x, m, dim, cb, out);
}

#if defined(QN_X86)
// AVX2 (also what the avx512 path runs: this op has no AVX-512 code of its own): argmin_body's
// steps in intrinsics, P points x 8 centroids per step, the accumulators in registers.
template <int P>
QN_TARGET_AVX2 void argmin_avx2_step(const float* __restrict__ x, int64_t dim, const WeightedCodebook& cb,
                                     int32_t* __restrict__ out) {
  __m256 best[P], idx[P];  // idx: int32 bit patterns, blended as floats
  for (int p = 0; p < P; ++p) {
    best[p] = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    idx[p] = _mm256_setzero_ps();
  }
  __m256i kv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  for (int64_t kb = 0; kb < cb.kp; kb += kLanes) {
    __m256 acc[P];
    const __m256 q = _mm256_loadu_ps(cb.q.data() + kb);
    for (int p = 0; p < P; ++p) acc[p] = q;
    for (int64_t e = 0; e < dim; ++e) {
      const __m256 row = _mm256_loadu_ps(cb.hct.data() + e * cb.kp + kb);
      for (int p = 0; p < P; ++p) acc[p] = _mm256_fnmadd_ps(_mm256_set1_ps(x[p * dim + e]), row, acc[p]);
    }
    const __m256 kvf = _mm256_castsi256_ps(kv);
    for (int p = 0; p < P; ++p) {
      const __m256 lt = _mm256_cmp_ps(acc[p], best[p], _CMP_LT_OQ);
      best[p] = _mm256_blendv_ps(best[p], acc[p], lt);
      idx[p] = _mm256_blendv_ps(idx[p], kvf, lt);
    }
    kv = _mm256_add_epi32(kv, step);
  }
  for (int p = 0; p < P; ++p) {
    alignas(32) float b[kLanes];
    alignas(32) int32_t i[kLanes];
    _mm256_store_ps(b, best[p]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(i), _mm256_castps_si256(idx[p]));
    float mn = b[0];
    for (int l = 1; l < kLanes; ++l) mn = b[l] < mn ? b[l] : mn;
    int32_t code = std::numeric_limits<int32_t>::max();
    for (int l = 0; l < kLanes; ++l) code = (b[l] == mn && i[l] < code) ? i[l] : code;
    out[p] = code;
  }
}

QN_TARGET_AVX2 void argmin_avx2(const float* x, int64_t m, int64_t dim, const WeightedCodebook& cb, int32_t* out) {
  int64_t i = 0;
  for (; i + kPoints <= m; i += kPoints) argmin_avx2_step<kPoints>(x + i * dim, dim, cb, out + i);
  for (; i < m; ++i) argmin_avx2_step<1>(x + i * dim, dim, cb, out + i);
}
#endif

void argmin_points(CpuIsa isa, const float* x, int64_t m, int64_t dim, const WeightedCodebook& cb, int32_t* out) {
#if defined(QN_X86)
  if (isa != CpuIsa::kPortable) return argmin_avx2(x, m, dim, cb, out);
#endif
  argmin_portable(x, m, dim, cb, out);
}

std::tuple<at::Tensor, at::Tensor> kmeans_assign_weighted_cpu(const at::Tensor& x,          // [B, N, D]
                                                              const at::Tensor& centroids,  // [B, K, D]
                                                              const at::Tensor& h) {        // [B, G, D(, D)]
  const KMeansWeightedShape s = check_kmeans_assign_weighted_args(x, centroids, h);
  const int64_t batch = s.batch, n = s.n, dim = s.dim, groups = s.groups, k = centroids.size(1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor c = centroids.to(at::kFloat).contiguous();
  const at::Tensor hc = h.contiguous();
  at::Tensor codes = empty_cpu_output({batch, n}, x.options().dtype(at::kLong));
  at::Tensor dist = empty_cpu_output({batch, n}, x.options().dtype(at::kFloat));
  if (batch == 0 || n == 0) return {codes, dist};

  const CpuIsa isa = cpu_isa();
  const int64_t per_group = n / groups, n_tiles = (per_group + kTile - 1) / kTile;
  const float* c_ptr = c.const_data_ptr<float>();
  const float* h_ptr = hc.const_data_ptr<float>();
  int64_t* codes_ptr = codes.mutable_data_ptr<int64_t>();
  float* dist_ptr = dist.mutable_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_assign_weighted_cpu", [&] {
    const scalar_t* x_ptr = xc.const_data_ptr<scalar_t>();
    at::parallel_for(0, batch * groups * n_tiles, 1, [&](int64_t t_begin, int64_t t_end) {
      WeightedCodebook cb;
      std::vector<float> xbuf;
      int32_t tile_codes[kTile];
      float tile_dist[kTile];
      int64_t built = -1;  // the (b, g) whose codebook cb holds
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t bg = t / n_tiles, b = bg / groups, g = bg % groups;
        const int64_t i0 = (t % n_tiles) * kTile, m = std::min(kTile, per_group - i0);
        const float* hg = h_ptr + bg * s.h_entries();
        if (built != bg) {
          build_codebook(isa, hg, c_ptr + b * k * dim, k, dim, s.diag, cb);
          built = bg;
        }
        xbuf.resize(static_cast<size_t>(m * dim));  // the tile's points n = g + (i0 + i) * G, as fp32
        for (int64_t i = 0; i < m; ++i) {
          const scalar_t* src = x_ptr + (b * n + g + (i0 + i) * groups) * dim;
          for (int64_t e = 0; e < dim; ++e) xbuf[i * dim + e] = static_cast<float>(src[e]);
        }
        argmin_points(isa, xbuf.data(), m, dim, cb, tile_codes);
        distances(isa, hg, xbuf.data(), m, dim, c_ptr + b * k * dim, tile_codes, s.diag, tile_dist);
        for (int64_t i = 0; i < m; ++i) {
          const int64_t at = b * n + g + (i0 + i) * groups;
          codes_ptr[at] = tile_codes[i];
          dist_ptr[at] = tile_dist[i];
        }
      }
    });
  });
  return {codes, dist};
}

// ---------------------------------------------------------------------------------------------
// kmeans_update_weighted. Fixed chunks of points (their number depends on the shapes only)
// accumulate in fp64 partial buffers, reduced in chunk order: the result does not depend on the
// thread count. Two layouts of a chunk's statistics:
//   grouped (G*K small, e.g. a Linear layer's block columns): per (group g, cluster k) the sum of x
//     and the count, D + 1 adds per point as in kmeans_update; H enters once per (g, k) at the end:
//     h_sums[k] = sum_g count[g][k] H_g, hx_sums[k] = sum_g H_g sum[g][k];
//   per point (G*K large, e.g. one group per embedding row): h_sums[k] += H_g, hx_sums[k] += H_g x.
struct UpdatePlan {
  int64_t n_chunks, chunk, stride;
  bool grouped;
};

UpdatePlan update_plan(const KMeansWeightedShape& s, int64_t k) {
  const int64_t grouped_stride = s.groups * k * (s.dim + 1);
  const bool grouped = grouped_stride <= (int64_t{1} << 20);
  const int64_t stride = grouped ? grouped_stride : k * (s.h_entries() + 2 * s.dim + 1);
  const int64_t by_size = (s.n + 16383) / 16384;
  // ~32 MiB in all per point; grouped chunks hold G*K rows each, so fewer of them (~2 MiB per problem).
  const int64_t budget = grouped ? (int64_t{1} << 18) : (int64_t{1} << 22);
  const int64_t by_memory = std::max<int64_t>(1, budget / (stride * s.batch));
  const int64_t n_chunks = std::max<int64_t>(1, std::min({by_size, by_memory, int64_t{64}}));
  return {n_chunks, (s.n + n_chunks - 1) / n_chunks, stride, grouped};
}

// Adds point x (code k, group g) to one chunk's partial statistics.
template <typename scalar_t>
inline void accumulate_point(const UpdatePlan& plan, const KMeansWeightedShape& s, int64_t k, double* part,
                             const scalar_t* xi, const float* hg, int64_t g, int64_t code) {
  const int64_t dim = s.dim, hd = s.h_entries();
  if (plan.grouped) {
    double* row = part + (g * k + code) * (dim + 1);
    for (int64_t e = 0; e < dim; ++e) row[e] += static_cast<double>(xi[e]);
    row[dim] += 1.0;
    return;
  }
  double* hs_k = part + code * hd;
  double* hx_k = part + k * hd + code * dim;
  double* s_k = part + k * (hd + dim) + code * dim;
  for (int64_t j = 0; j < hd; ++j) hs_k[j] += static_cast<double>(hg[j]);
  for (int64_t e = 0; e < dim; ++e) {
    double acc = 0.0;
    if (s.diag) {
      acc = static_cast<double>(hg[e]) * static_cast<double>(xi[e]);
    } else {
      for (int64_t f = 0; f < dim; ++f) acc += static_cast<double>(hg[e * dim + f]) * static_cast<double>(xi[f]);
    }
    hx_k[e] += acc;
    s_k[e] += static_cast<double>(xi[e]);
  }
  part[k * (hd + 2 * dim) + code] += 1.0;
}

// Sums the chunks of problem b and writes cluster j's outputs (grouped: applies each H_g once).
void finish_cluster(const UpdatePlan& plan, const KMeansWeightedShape& s, int64_t k, const std::vector<double>& partial,
                    const float* h_ptr, int64_t b, int64_t j, float* hs_out, float* hx_out, float* s_out,
                    int64_t* n_out) {
  const int64_t dim = s.dim, hd = s.h_entries();
  std::vector<double> hs(static_cast<size_t>(hd), 0.0), hx(static_cast<size_t>(dim), 0.0), sm(hx), gsum(hx);
  double count = 0.0;
  const double* base = partial.data() + b * plan.n_chunks * plan.stride;
  if (plan.grouped) {
    for (int64_t g = 0; g < s.groups; ++g) {
      std::fill(gsum.begin(), gsum.end(), 0.0);
      double gc = 0.0;
      for (int64_t ch = 0; ch < plan.n_chunks; ++ch) {
        const double* row = base + ch * plan.stride + (g * k + j) * (dim + 1);
        for (int64_t e = 0; e < dim; ++e) gsum[e] += row[e];
        gc += row[dim];
      }
      if (gc == 0.0) continue;
      const float* hg = h_ptr + (b * s.groups + g) * hd;
      for (int64_t i = 0; i < hd; ++i) hs[i] += gc * static_cast<double>(hg[i]);
      for (int64_t e = 0; e < dim; ++e) {
        double acc = 0.0;
        if (s.diag) {
          acc = static_cast<double>(hg[e]) * gsum[e];
        } else {
          for (int64_t f = 0; f < dim; ++f) acc += static_cast<double>(hg[e * dim + f]) * gsum[f];
        }
        hx[e] += acc;
        sm[e] += gsum[e];
      }
      count += gc;
    }
  } else {
    for (int64_t ch = 0; ch < plan.n_chunks; ++ch) {
      const double* part = base + ch * plan.stride;
      for (int64_t i = 0; i < hd; ++i) hs[i] += part[j * hd + i];
      for (int64_t e = 0; e < dim; ++e) {
        hx[e] += part[k * hd + j * dim + e];
        sm[e] += part[k * (hd + dim) + j * dim + e];
      }
      count += part[k * (hd + 2 * dim) + j];
    }
  }
  for (int64_t i = 0; i < hd; ++i) hs_out[(b * k + j) * hd + i] = static_cast<float>(hs[i]);
  for (int64_t e = 0; e < dim; ++e) {
    hx_out[(b * k + j) * dim + e] = static_cast<float>(hx[e]);
    s_out[(b * k + j) * dim + e] = static_cast<float>(sm[e]);
  }
  n_out[b * k + j] = static_cast<int64_t>(count);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_update_weighted_cpu(const at::Tensor& x,
                                                                                      const at::Tensor& codes,
                                                                                      const at::Tensor& h,
                                                                                      int64_t n_centroids) {
  const KMeansWeightedShape s = check_kmeans_update_weighted_args(x, codes, h, n_centroids);
  KMeansWeightedUpdateIO io = kmeans_weighted_update_io(s, x, codes, h, n_centroids);
  if (io.empty()) return {io.h_sums, io.hx_sums, io.sums, io.counts};
  const int64_t batch = s.batch, n = s.n, dim = s.dim, groups = s.groups, k = io.k;
  const UpdatePlan plan = update_plan(s, k);
  std::vector<double> partial(static_cast<size_t>(batch * plan.n_chunks * plan.stride), 0.0);
  std::atomic<int64_t> bad_code{0};
  std::atomic<bool> bad{false};
  const int64_t* code_ptr = io.codes.const_data_ptr<int64_t>();
  const float* h_ptr = io.h.const_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "kmeans_update_weighted_cpu", [&] {
    const scalar_t* x_ptr = io.x.const_data_ptr<scalar_t>();
    const int64_t per_point = plan.grouped ? dim : s.h_entries() + dim;
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, plan.chunk * per_point));
    at::parallel_for(0, batch * plan.n_chunks, grain, [&](int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t b = t / plan.n_chunks, i0 = (t % plan.n_chunks) * plan.chunk;
        const int64_t i1 = std::min(n, i0 + plan.chunk);
        double* part = partial.data() + t * plan.stride;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t code = code_ptr[b * n + i];
          if (code < 0 || code >= k) {
            if (!bad.exchange(true)) bad_code.store(code);
            continue;
          }
          const int64_t g = i % groups;
          accumulate_point(plan, s, k, part, x_ptr + (b * n + i) * dim, h_ptr + (b * groups + g) * s.h_entries(), g,
                           code);
        }
      }
    });
  });
  QN_CHECK_VALUE(!bad.load(), "kmeans_update_weighted", "codes must lie in [0, n_centroids=", k, "), got ",
                 bad_code.load());
  float* hs_out = io.h_sums.mutable_data_ptr<float>();
  float* hx_out = io.hx_sums.mutable_data_ptr<float>();
  float* s_out = io.sums.mutable_data_ptr<float>();
  int64_t* n_out = io.counts.mutable_data_ptr<int64_t>();
  at::parallel_for(0, batch * k, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      finish_cluster(plan, s, k, partial, h_ptr, t / k, t % k, hs_out, hx_out, s_out, n_out);
    }
  });
  return {io.h_sums, io.hx_sums, io.sums, io.counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) {
  m.impl("kmeans_assign_weighted", &kmeans_assign_weighted_cpu);
  m.impl("kmeans_update_weighted", &kmeans_update_weighted_cpu);
}

}  // namespace quantnoise
