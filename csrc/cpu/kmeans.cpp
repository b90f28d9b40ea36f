// CPU kernels of quantnoise::kmeans_assign and quantnoise::kmeans_update (DESIGN §3.2).
//
// kmeans_assign ranks centroids by score = 0.5*||c||^2 - x.c (quantnoise/kmeans.h), fused with a
// running argmin: no N x K matrix. The codebook of each problem is transposed once to [D][Kp]
// (Kp = K rounded up to 16, padding scored +inf), so one FMA scores 16 (AVX-512) or 8 (AVX2)
// centroids against one coordinate of a point. One point at a time would be bound by the FMA
// latency chain; the kernels keep P points in flight (P independent accumulators per centroid
// block), x coordinates broadcast straight from memory. The path is cpu_isa()'s
// (quantnoise/cpu_features.h); every path computes the same FMA chain in the same order, so all
// give identical codes.
#include "quantnoise/kmeans.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/kmeans_host.h"

#if defined(QN_X86)
// GCC 12's _mm512_reduce_* start from _mm512_undefined_*, which -Wuninitialized flags (harmless).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#endif

namespace quantnoise {
namespace {

constexpr int64_t kLanePad = 16;  // Kp is a multiple of the widest vector
constexpr int64_t kTile = 128;    // points per task (and per fp16/bf16 conversion buffer)

// The transposed codebook of one problem: ct[d * kp + k], h[k] = half_norm (+inf for padding).
struct Codebook {
  const float* ct;
  const float* h;
  int64_t kp;
  int64_t k;
};

#if defined(QN_X86)
// ---------------------------------------------------------------------------------------------
// AVX-512: P points x 16 centroids per step.
template <int P, int DC>
QN_TARGET_AVX512 void argmin_avx512(const float* __restrict__ x, int64_t dim_rt, const Codebook& cb,
                                    int32_t* __restrict__ out) {
  const int64_t dim = DC > 0 ? DC : dim_rt;
  __m512 best[P];
  __m512i idx[P];
  for (int p = 0; p < P; ++p) {
    best[p] = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    idx[p] = _mm512_setzero_si512();
  }
  __m512i kv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t kb = 0; kb < cb.kp; kb += 16) {
    // Opaque to the optimiser: otherwise GCC hoists all P*D broadcasts out of the loop and
    // spills them to the stack; in the loop they are free embedded-broadcast FMA operands.
    asm("" : "+r"(x));
    const __m512 hv = _mm512_loadu_ps(cb.h + kb);
    __m512 acc[P];
    for (int p = 0; p < P; ++p) acc[p] = hv;
    for (int64_t d = 0; d < dim; ++d) {
      const __m512 c = _mm512_loadu_ps(cb.ct + d * cb.kp + kb);
      for (int p = 0; p < P; ++p) acc[p] = _mm512_fnmadd_ps(_mm512_set1_ps(x[p * dim + d]), c, acc[p]);
    }
    for (int p = 0; p < P; ++p) {  // strict <: a lane keeps its lowest k among equal scores
      const __mmask16 m = _mm512_cmp_ps_mask(acc[p], best[p], _CMP_LT_OQ);
      best[p] = _mm512_mask_mov_ps(best[p], m, acc[p]);
      idx[p] = _mm512_mask_mov_epi32(idx[p], m, kv);
    }
    kv = _mm512_add_epi32(kv, step);
  }
  for (int p = 0; p < P; ++p) {  // lowest index among the lanes holding the minimum
    const float mn = _mm512_reduce_min_ps(best[p]);
    const __mmask16 at_min = _mm512_cmp_ps_mask(best[p], _mm512_set1_ps(mn), _CMP_EQ_OQ);
    out[p] = _mm512_mask_reduce_min_epi32(at_min, idx[p]);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2: P points x 8 centroids per step (16 ymm registers: P = 4).
template <int P, int DC>
QN_TARGET_AVX2 void argmin_avx2(const float* __restrict__ x, int64_t dim_rt, const Codebook& cb,
                                int32_t* __restrict__ out) {
  const int64_t dim = DC > 0 ? DC : dim_rt;
  __m256 best[P];
  __m256 idx[P];  // int32 bit patterns, blended as floats
  for (int p = 0; p < P; ++p) {
    best[p] = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    idx[p] = _mm256_setzero_ps();
  }
  __m256i kv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  for (int64_t kb = 0; kb < cb.kp; kb += 8) {
    const __m256 hv = _mm256_loadu_ps(cb.h + kb);
    __m256 acc[P];
    for (int p = 0; p < P; ++p) acc[p] = hv;
    for (int64_t d = 0; d < dim; ++d) {
      const __m256 c = _mm256_loadu_ps(cb.ct + d * cb.kp + kb);
      for (int p = 0; p < P; ++p) acc[p] = _mm256_fnmadd_ps(_mm256_set1_ps(x[p * dim + d]), c, acc[p]);
    }
    const __m256 kvf = _mm256_castsi256_ps(kv);
    for (int p = 0; p < P; ++p) {
      const __m256 m = _mm256_cmp_ps(acc[p], best[p], _CMP_LT_OQ);
      best[p] = _mm256_blendv_ps(best[p], acc[p], m);
      idx[p] = _mm256_blendv_ps(idx[p], kvf, m);
    }
    kv = _mm256_add_epi32(kv, step);
  }
  for (int p = 0; p < P; ++p) {
    alignas(32) float b[8];
    alignas(32) int32_t i[8];
    _mm256_store_ps(b, best[p]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(i), _mm256_castps_si256(idx[p]));
    float mn = b[0];
    for (int l = 1; l < 8; ++l) mn = b[l] < mn ? b[l] : mn;
    int32_t code = std::numeric_limits<int32_t>::max();
    for (int l = 0; l < 8; ++l) code = (b[l] == mn && i[l] < code) ? i[l] : code;
    out[p] = code;
  }
}
#endif  // QN_X86

// ---------------------------------------------------------------------------------------------
// Portable: one point at a time, the same FMA chain (fmaf) and the same rule.
void argmin_portable(const float* __restrict__ x, int64_t dim, const Codebook& cb, int32_t* __restrict__ out) {
  float best = std::numeric_limits<float>::infinity();
  int32_t code = 0;
  for (int64_t k = 0; k < cb.k; ++k) {
    float s = cb.h[k];
    for (int64_t d = 0; d < dim; ++d) s = fmaf(-x[d], cb.ct[d * cb.kp + k], s);
    if (s < best) {
      best = s;
      code = static_cast<int32_t>(k);
    }
  }
  *out = code;
}

// Exact squared distance of each point to its chosen centroid. Compiled twice so that fmaf
// becomes one instruction where the CPU has FMA (a libm call otherwise); same value either way.
[[gnu::always_inline]] inline void distances_body(const float* x, int64_t n, int64_t dim, const float* c,
                                                  const int32_t* codes, float* dist) {
  for (int64_t i = 0; i < n; ++i) dist[i] = kmeans_squared_distance(x + i * dim, c + codes[i] * dim, dim);
}
#if defined(QN_X86)
QN_TARGET_AVX2 void distances_fma(const float* x, int64_t n, int64_t dim, const float* c, const int32_t* codes,
                                  float* dist) {
  distances_body(x, n, dim, c, codes, dist);
}
#endif
void distances(CpuIsa isa, const float* x, int64_t n, int64_t dim, const float* c, const int32_t* codes, float* dist) {
#if defined(QN_X86)
  if (isa != CpuIsa::kPortable) return distances_fma(x, n, dim, c, codes, dist);
#endif
  distances_body(x, n, dim, c, codes, dist);
}

// Codes of n points x[n][dim] (fp32, contiguous). DC > 0: the dimension as a compile-time constant.
template <int DC>
void argmin_points(CpuIsa isa, const float* x, int64_t n, int64_t dim, const Codebook& cb, int32_t* out) {
  int64_t i = 0;
#if defined(QN_X86)
  if (isa == CpuIsa::kAvx512) {
    constexpr int P = 8;
    for (; i + P <= n; i += P) argmin_avx512<P, DC>(x + i * dim, dim, cb, out + i);
    for (; i < n; ++i) argmin_avx512<1, DC>(x + i * dim, dim, cb, out + i);
  } else if (isa == CpuIsa::kAvx2) {
    constexpr int P = 4;
    for (; i + P <= n; i += P) argmin_avx2<P, DC>(x + i * dim, dim, cb, out + i);
    for (; i < n; ++i) argmin_avx2<1, DC>(x + i * dim, dim, cb, out + i);
  }
#endif
  for (; i < n; ++i) argmin_portable(x + i * dim, dim, cb, out + i);
}

using ArgminFn = void (*)(CpuIsa, const float*, int64_t, int64_t, const Codebook&, int32_t*);

ArgminFn argmin_for_dim(int64_t dim) {
  return QN_DISPATCH_BLOCK_SIZE(dim, kDim, [] { return ArgminFn{&argmin_points<kDim>}; });
}

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cpu(const at::Tensor& x,            // [B, N, D]
                                                     const at::Tensor& centroids) {  // [B, K, D]
  check_kmeans_assign_args(x, centroids);
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), k = centroids.size(1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor c = centroids.to(at::kFloat).contiguous();
  at::Tensor codes = empty_cpu_output({batch, n}, x.options().dtype(at::kLong));
  at::Tensor dist = empty_cpu_output({batch, n}, x.options().dtype(at::kFloat));
  if (batch == 0 || n == 0) return {codes, dist};

  // Transposed codebooks and half norms (O(B*K*D), small next to x).
  const int64_t kp = (k + kLanePad - 1) / kLanePad * kLanePad;
  std::vector<float> ct_buf(static_cast<size_t>(batch * std::max<int64_t>(dim, 1) * kp), 0.0f);
  std::vector<float> h_buf(static_cast<size_t>(batch * kp), std::numeric_limits<float>::infinity());
  const float* c_ptr = c.const_data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      for (int64_t j = 0; j < k; ++j) {
        const float* cj = c_ptr + (b * k + j) * dim;
        h_buf[b * kp + j] = kmeans_half_norm(cj, dim);
        for (int64_t d = 0; d < dim; ++d) ct_buf[(b * dim + d) * kp + j] = cj[d];
      }
    }
  });

  const at::Tensor bounds = kmeans_centroid_bounds(c);  // [B]: which points need float64 scores
  const float* max_c = bounds.const_data_ptr<float>();

  const CpuIsa isa = cpu_isa();
  const ArgminFn argmin = argmin_for_dim(dim);
  const int64_t n_tiles = (n + kTile - 1) / kTile;
  int64_t* codes_ptr = codes.mutable_data_ptr<int64_t>();
  float* dist_ptr = dist.mutable_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_assign_cpu", [&] {
    const scalar_t* x_ptr = xc.const_data_ptr<scalar_t>();
    // Tasks of kTile points: ~16 KiB of fp32 x at D=32, and >= 1024 tasks at N=131072.
    at::parallel_for(0, batch * n_tiles, 1, [&](int64_t t_begin, int64_t t_end) {
      std::vector<float> xbuf;  // fp32 copy of a tile when x is not fp32
      int32_t tile_codes[kTile];
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t b = t / n_tiles, i0 = (t % n_tiles) * kTile;
        const int64_t m = std::min(kTile, n - i0);
        const Codebook cb{ct_buf.data() + b * dim * kp, h_buf.data() + b * kp, kp, k};
        const scalar_t* src = x_ptr + (b * n + i0) * dim;
        const float* xt;
        if constexpr (std::is_same_v<scalar_t, float>) {
          xt = reinterpret_cast<const float*>(src);  // scalar_t is float here
        } else {
          xbuf.resize(static_cast<size_t>(m * dim));
          for (int64_t e = 0; e < m * dim; ++e) xbuf[e] = static_cast<float>(src[e]);
          xt = xbuf.data();
        }
        argmin(isa, xt, m, dim, cb, tile_codes);
        const float* cb_rows = c_ptr + b * k * dim;
        for (int64_t i = 0; i < m; ++i) {  // float32 scores that could overflow: ranked in float64
          if (kmeans_needs_exact(xt + i * dim, dim, max_c[b])) {
            tile_codes[i] = static_cast<int32_t>(kmeans_argmin_exact(xt + i * dim, cb_rows, k, dim));
          }
        }
        distances(isa, xt, m, dim, cb_rows, tile_codes, dist_ptr + b * n + i0);
        for (int64_t i = 0; i < m; ++i) codes_ptr[b * n + i0 + i] = tile_codes[i];
      }
    });
  });
  return {codes, dist};
}

// ---------------------------------------------------------------------------------------------
// kmeans_update: fixed chunks of points (their number depends on the shapes only) accumulate in
// fp64 partial buffers, reduced in chunk order: the result does not depend on the thread count.
std::tuple<at::Tensor, at::Tensor> kmeans_update_cpu(const at::Tensor& x,      // [B, N, D]
                                                     const at::Tensor& codes,  // [B, N] int64
                                                     int64_t n_centroids) {
  check_kmeans_update_args(x, codes, n_centroids);
  const KMeansUpdateIO io = kmeans_update_io(x, codes, n_centroids);
  if (io.empty()) return {io.sums, io.counts};
  const int64_t batch = io.batch, n = io.n, dim = io.dim, k = io.k;

  const int64_t stride = k * dim + k;  // one chunk's partial sums then counts, as doubles
  const int64_t by_size = (n + 16383) / 16384;
  const int64_t by_memory = std::max<int64_t>(1, (int64_t{1} << 22) / (stride * batch));  // ~32 MiB in all
  const int64_t n_chunks = std::max<int64_t>(1, std::min({by_size, by_memory, int64_t{64}}));
  const int64_t chunk = (n + n_chunks - 1) / n_chunks;
  std::vector<double> partial(static_cast<size_t>(batch * n_chunks * stride), 0.0);
  std::atomic<int64_t> bad_code{0};
  std::atomic<bool> bad{false};
  const int64_t* code_ptr = io.codes.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "kmeans_update_cpu", [&] {
    const scalar_t* x_ptr = io.x.const_data_ptr<scalar_t>();
    // Below ~1M values one thread finishes in about a millisecond: waking a second one can cost
    // more than that on a busy machine. (Chunks, hence results, do not depend on this.)
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, chunk * dim));
    at::parallel_for(0, batch * n_chunks, grain, [&](int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t b = t / n_chunks, i0 = (t % n_chunks) * chunk, i1 = std::min(n, i0 + chunk);
        double* acc = partial.data() + t * stride;
        double* cnt = acc + k * dim;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t code = code_ptr[b * n + i];
          if (code < 0 || code >= k) {
            if (!bad.exchange(true)) bad_code.store(code);
            continue;
          }
          const scalar_t* xi = x_ptr + (b * n + i) * dim;
          double* row = acc + code * dim;
          for (int64_t d = 0; d < dim; ++d) row[d] += static_cast<double>(xi[d]);
          cnt[code] += 1.0;
        }
      }
    });
  });
  QN_CHECK_VALUE(!bad.load(), "kmeans_update", "codes must lie in [0, n_centroids=", k, "), got ", bad_code.load());
  float* s_ptr = io.sums.mutable_data_ptr<float>();
  int64_t* n_ptr = io.counts.mutable_data_ptr<int64_t>();
  at::parallel_for(0, batch * stride, 4096, [&](int64_t e_begin, int64_t e_end) {
    for (int64_t e = e_begin; e < e_end; ++e) {
      const int64_t b = e / stride, j = e % stride;
      double total = 0.0;
      for (int64_t ch = 0; ch < n_chunks; ++ch) total += partial[(b * n_chunks + ch) * stride + j];
      if (j < k * dim) {
        s_ptr[b * k * dim + j] = static_cast<float>(total);
      } else {
        n_ptr[b * k + (j - k * dim)] = static_cast<int64_t>(total);
      }
    }
  });
  return {io.sums, io.counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) {
  m.impl("kmeans_assign", &kmeans_assign_cpu);
  m.impl("kmeans_update", &kmeans_update_cpu);
}

}  // namespace quantnoise

#if defined(QN_X86)
#pragma GCC diagnostic pop
#endif
