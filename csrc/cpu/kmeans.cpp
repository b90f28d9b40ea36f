// CPU kernels of quantnoise::kmeans_assign and quantnoise::kmeans_update (DESIGN §3.2).
//
// kmeans_assign ranks centroids by score = 0.5*||c||^2 - x.c (quantnoise/kmeans.h), fused with a
// running argmin: no N x K matrix. Points fill the vector lanes: a tile of kTile points is converted
// to float32 and transposed into blocks of W points ([D][W]; on AVX2, float32 input with D a
// multiple of 8 goes through 8x8 register transposes); a centroid's scores for W points are D FMAs,
// its coordinates broadcast from the row-major codebook. Each lane keeps its point's running
// minimum and index; centroids come in ascending order and only a strictly lower score replaces the
// best, so the lowest index wins ties with no cross-lane step. Scoring one point at a time is bound
// by the FMA latency chain; the body keeps PB blocks x CI centroids of independent chains in flight
// (AVX2: 2 x 4, 16 points, each point vector loaded once per coordinate and used by 4 centroids:
// 6 loads per 8 FMAs; AVX-512: 2 x 8, 32 points). One body serves every path (cpu/kmeans_simd.h),
// chosen by cpu_isa() (quantnoise/cpu_features.h); all compute the same FMA chain in the same
// order, so all give identical codes. A NaN score never wins (strict <); points whose float32
// scores could overflow are ranked again in float64 (kmeans_needs_exact / kmeans_argmin_exact,
// quantnoise/kmeans.h), the per-point test asked only in tiles whose largest |value| could need it.
// The distances of the chosen centroids follow per tile (on AVX2 with D a multiple of 8, 8 points at
// a time, the chosen rows transposed as the points were).
#include "quantnoise/kmeans.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kmeans_simd.h"
#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/cpu_parallel.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/kmeans_host.h"

namespace quantnoise {
namespace {

constexpr int64_t kTile = 128;  // points per task: a multiple of every path's W * PB

// Lane-wise: where score < best, the score and the index kv replace them (strict: ties keep the lower index).
template <class V>
[[gnu::always_inline]] inline void keep_lower(typename V::F score, typename V::I kv, typename V::F& best,
                                              typename V::I& idx) {
  const typename V::M lower = V::lt(score, best);
  best = V::min(best, score);
  idx = V::select(lower, kv, idx);
}

// Codes of the points of PB blocks ([PB][D][W] floats) against the codebook c [k][D] with half
// norms h [k]: lane l of block p gets the lowest index of its minimum score.
template <class V, int PB, int CI, int64_t DC>
[[gnu::always_inline]] inline void argmin_blocks(const float* __restrict__ xt, int64_t dim_rt,
                                                 const float* __restrict__ c, const float* __restrict__ h, int64_t k,
                                                 int32_t* __restrict__ out) {
  constexpr int W = V::W;
  const int64_t dim = DC > 0 ? DC : dim_rt;
  typename V::F best[PB];
  typename V::I idx[PB];
  for (int p = 0; p < PB; ++p) {
    best[p] = V::inf();
    idx[p] = V::set_i(0);
  }
  typename V::I kv = V::set_i(0);  // the index of the centroid being compared, in every lane
  int64_t j = 0;
  for (; j + CI <= k; j += CI) {
    // Opaque to the optimiser: otherwise GCC hoists the PB*D point loads out of the loop and
    // spills them to the stack; in the loop they are FMA memory operands, read from L1.
    asm("" : "+r"(xt));
    typename V::F acc[CI][PB];
    for (int i = 0; i < CI; ++i) {
      for (int p = 0; p < PB; ++p) acc[i][p] = V::bcast(h + j + i);
    }
    for (int64_t d = 0; d < dim; ++d) {
      for (int i = 0; i < CI; ++i) {
        const typename V::F cd = V::bcast(c + (j + i) * dim + d);
        for (int p = 0; p < PB; ++p) acc[i][p] = V::fnmadd(V::load(xt + (p * dim + d) * W), cd, acc[i][p]);
      }
    }
    for (int i = 0; i < CI; ++i) {
      for (int p = 0; p < PB; ++p) keep_lower<V>(acc[i][p], kv, best[p], idx[p]);
      kv = V::inc(kv);
    }
  }
  for (; j < k; ++j) {  // the last k % CI centroids
    typename V::F acc[PB];
    for (int p = 0; p < PB; ++p) acc[p] = V::bcast(h + j);
    for (int64_t d = 0; d < dim; ++d) {
      const typename V::F cd = V::bcast(c + j * dim + d);
      for (int p = 0; p < PB; ++p) acc[p] = V::fnmadd(V::load(xt + (p * dim + d) * W), cd, acc[p]);
    }
    for (int p = 0; p < PB; ++p) keep_lower<V>(acc[p], kv, best[p], idx[p]);
    kv = V::inc(kv);
  }
  for (int p = 0; p < PB; ++p) V::store_i(out + p * W, idx[p]);
}

// A tile's n_blocks blocks (a multiple of PB) through the body, compiled for each path.
template <class V, int PB, int CI, int64_t DC>
[[gnu::always_inline]] inline void argmin_tile(const float* xt, int64_t n_blocks, int64_t dim, const float* c,
                                               const float* h, int64_t k, int32_t* out) {
  for (int64_t blk = 0; blk < n_blocks; blk += PB) {
    argmin_blocks<V, PB, CI, DC>(xt + blk * dim * V::W, dim, c, h, k, out + blk * V::W);
  }
}
template <int64_t DC>
void argmin_portable(const float* xt, int64_t n_blocks, int64_t dim, const float* c, const float* h, int64_t k,
                     int32_t* out) {
  argmin_tile<PortableVec, 1, 1, DC>(xt, n_blocks, dim, c, h, k, out);
}
#if defined(QN_X86)
template <int64_t DC>
QN_TARGET_AVX2 void argmin_avx2(const float* xt, int64_t n_blocks, int64_t dim, const float* c, const float* h,
                                int64_t k, int32_t* out) {
  argmin_tile<Avx2Vec, 2, 4, DC>(xt, n_blocks, dim, c, h, k, out);  // 8 accumulators + 4 best/index: 16 ymm
}
template <int64_t DC>
QN_TARGET_AVX512 void argmin_avx512(const float* xt, int64_t n_blocks, int64_t dim, const float* c, const float* h,
                                    int64_t k, int32_t* out) {
  argmin_tile<Avx512Vec, 2, 8, DC>(xt, n_blocks, dim, c, h, k, out);  // 16 accumulators + 4 best/index of 32 zmm
}
#endif

struct ArgminPath {
  void (*fn)(const float*, int64_t, int64_t, const float*, const float*, int64_t, int32_t*);
  int64_t width;  // points per block: the path's W
  int64_t group;  // points per call of the body: W * PB (the blocks of a tile come in multiples of PB)
  int64_t blocks_for(int64_t m) const { return (m + group - 1) / group * (group / width); }
};

ArgminPath argmin_path(CpuIsa isa, int64_t dim) {
  return QN_DISPATCH_BLOCK_SIZE(dim, kDim, [&] {
#if defined(QN_X86)
    if (isa == CpuIsa::kAvx512) return ArgminPath{&argmin_avx512<kDim>, Avx512Vec::W, 2 * Avx512Vec::W};
    if (isa == CpuIsa::kAvx2) return ArgminPath{&argmin_avx2<kDim>, Avx2Vec::W, 2 * Avx2Vec::W};
#endif
    return ArgminPath{&argmin_portable<kDim>, PortableVec::W, PortableVec::W};
  });
}

// Points [i0, i0 + m) of x [.., D] as float32 blocks of `width` points, transposed ([block][D][width]),
// zero padded to a whole number of tiles' blocks. Block by block: no division per point.
#if defined(QN_X86)
// r[l] = coordinates d0..d0+7 of row l into out[e] = coordinate d0 + e of rows 0..7 (an 8x8 transpose).
QN_TARGET_AVX2 inline void transpose8x8(const __m256 (&r)[8], __m256 (&out)[8]) {
  __m256 t[8], u[8];
  // t[l] = (l0 l'0 l1 l'1 | l4 l'4 l5 l'5), t[l+1] = (l2 l'2 l3 l'3 | l6 ..), l' = l+1
  for (int l = 0; l < 8; l += 2) {
    t[l] = _mm256_unpacklo_ps(r[l], r[l + 1]);
    t[l + 1] = _mm256_unpackhi_ps(r[l], r[l + 1]);
  }
  for (int q = 0; q < 8; q += 4) {  // u[q + e]: coordinates e and e + 4 of rows q..q+3
    u[q + 0] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
    u[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xee);
    u[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
    u[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xee);
  }
  for (int e = 0; e < 4; ++e) {
    out[e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x20);
    out[e + 4] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x31);
  }
}

// The float32 points [8][dim] (dim a multiple of 8) as one 8-point block [dim][8] (the scalar loop
// below costs a fifth of the AVX2 argmin at D = 8).
QN_TARGET_AVX2 void transpose_block8_avx2(const float* src, int64_t dim, float* blk) {
  for (int64_t d0 = 0; d0 < dim; d0 += 8) {
    __m256 r[8], col[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(src + l * dim + d0);
    transpose8x8(r, col);
    for (int e = 0; e < 8; ++e) _mm256_storeu_ps(blk + (d0 + e) * 8, col[e]);
  }
}
#endif

template <typename scalar_t>
void transpose_tile(CpuIsa isa, const scalar_t* x, int64_t m, int64_t dim, int64_t width, float* xt) {
  if (m < kTile) std::fill_n(xt, kTile * dim, 0.0f);
  int64_t i0 = 0;
#if defined(QN_X86)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (isa != CpuIsa::kPortable && width == 8 && dim % 8 == 0) {
      for (; i0 + 8 <= m; i0 += 8) transpose_block8_avx2(x + i0 * dim, dim, xt + i0 * dim);
    }
  }
#endif
  (void)isa;
  for (; i0 < m; i0 += width) {
    const int64_t w = std::min(width, m - i0);
    const scalar_t* src = x + i0 * dim;
    float* blk = xt + i0 * dim;  // block i0 / width starts at (i0 / width) * dim * width floats
    for (int64_t l = 0; l < w; ++l) {
      for (int64_t d = 0; d < dim; ++d) blk[d * width + l] = static_cast<float>(src[l * dim + d]);
    }
  }
}

// The bits of the largest |value| of xt [count] as int32: ordered as the floats, NaN and infinity
// (0x7f800000 and above) above every finite value. Compiled twice as distances_body below (vpmaxsd
// where the CPU has AVX2).
[[gnu::always_inline]] inline int32_t top_bits_body(const float* xt, int64_t count) {
  int32_t top = 0;
  for (int64_t e = 0; e < count; ++e) {
    int32_t bits;
    std::memcpy(&bits, xt + e, sizeof bits);
    bits &= 0x7fffffff;
    top = bits > top ? bits : top;
  }
  return top;
}
#if defined(QN_X86)
QN_TARGET_AVX2 int32_t top_bits_avx2(const float* xt, int64_t count) { return top_bits_body(xt, count); }
#endif

// Whether some point of a transposed tile (the first `count` floats of xt: its points and zero
// padding) may need the float64 ranking. kmeans_needs_exact grows with the point's largest |x_d|
// and is true for a NaN or infinite one, so it is asked once, of a point whose every coordinate is
// the tile's largest |value| (`probe`, dim floats): false there means false for every point of the
// tile, and the per-point test runs only where this says true.
bool tile_may_need_exact(CpuIsa isa, const float* xt, int64_t count, float* probe, int64_t dim, float max_c) {
#if defined(QN_X86)
  const int32_t top = isa != CpuIsa::kPortable ? top_bits_avx2(xt, count) : top_bits_body(xt, count);
#else
  (void)isa;
  const int32_t top = top_bits_body(xt, count);
#endif
  float largest;
  std::memcpy(&largest, &top, sizeof largest);
  std::fill_n(probe, dim, largest);
  return kmeans_needs_exact(probe, dim, max_c);
}

// Exact squared distance of each point of a transposed tile to its chosen centroid (the FMA chain of
// kmeans_squared_distance). Compiled twice so that fmaf becomes one instruction where the CPU has
// FMA (a libm call otherwise); same value either way.
[[gnu::always_inline]] inline void distances_body(const float* xt, int64_t m, int64_t dim, int64_t width,
                                                  const float* c, const int32_t* codes, float* dist) {
  for (int64_t i0 = 0; i0 < m; i0 += width) {  // block by block: no division per point
    const int64_t w = std::min(width, m - i0);
    const float* blk = xt + i0 * dim;
    for (int64_t l = 0; l < w; ++l) {
      const float* ci = c + codes[i0 + l] * dim;
      float acc = 0.0f;
      for (int64_t d = 0; d < dim; ++d) {
        const float diff = blk[d * width + l] - ci[d];
        acc = fmaf(diff, diff, acc);
      }
      dist[i0 + l] = acc;
    }
  }
}
#if defined(QN_X86)
QN_TARGET_AVX2 void distances_fma(const float* xt, int64_t m, int64_t dim, int64_t width, const float* c,
                                  const int32_t* codes, float* dist) {
  distances_body(xt, m, dim, width, c, codes, dist);
}
// The same chain on whole 8-point blocks of the 8-wide layout (dim a multiple of 8), the chosen
// centroids' rows transposed in registers as the points were (gathers are slower on Zen 3).
QN_TARGET_AVX2 void distances_block8(const float* xt, int64_t m, int64_t dim, const float* c, const int32_t* codes,
                                     float* dist) {
  int64_t i0 = 0;
  for (; i0 + 8 <= m; i0 += 8) {
    const float* blk = xt + i0 * dim;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t d0 = 0; d0 < dim; d0 += 8) {
      __m256 r[8], cd[8];
      for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(c + codes[i0 + l] * dim + d0);
      transpose8x8(r, cd);
      for (int e = 0; e < 8; ++e) {
        const __m256 diff = _mm256_sub_ps(_mm256_loadu_ps(blk + (d0 + e) * 8), cd[e]);
        acc = _mm256_fmadd_ps(diff, diff, acc);
      }
    }
    _mm256_storeu_ps(dist + i0, acc);
  }
  distances_body(xt + i0 * dim, m - i0, dim, 8, c, codes + i0, dist + i0);
}
#endif
void distances(CpuIsa isa, const float* xt, int64_t m, int64_t dim, int64_t width, const float* c, const int32_t* codes,
               float* dist) {
#if defined(QN_X86)
  if (isa != CpuIsa::kPortable && width == 8 && dim % 8 == 0) return distances_block8(xt, m, dim, c, codes, dist);
  if (isa != CpuIsa::kPortable) return distances_fma(xt, m, dim, width, c, codes, dist);
#endif
  distances_body(xt, m, dim, width, c, codes, dist);
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

  const float* c_ptr = c.const_data_ptr<float>();
  std::vector<float> h(static_cast<size_t>(batch * k));  // half norms
  for (int64_t e = 0; e < batch * k; ++e) h[e] = kmeans_half_norm(c_ptr + e * dim, dim);

  const at::Tensor bounds = kmeans_centroid_bounds(c);  // [B]: which points need float64 scores
  const float* max_c = bounds.const_data_ptr<float>();

  const CpuIsa isa = cpu_isa();
  const ArgminPath path = argmin_path(isa, dim);
  const int64_t n_tiles = (n + kTile - 1) / kTile;
  int64_t* codes_ptr = codes.mutable_data_ptr<int64_t>();
  float* dist_ptr = dist.mutable_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_assign_cpu", [&] {
    const scalar_t* x_ptr = xc.const_data_ptr<scalar_t>();
    // Tasks of kTile points (1024 tasks at N=131072), handed out a few at a time: ~2^20 FMAs each
    // (tens of microseconds), so small problems stay on one thread.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / (kTile * k * std::max<int64_t>(dim, 1)));
    parallel_for_dynamic(0, batch * n_tiles, grain, [&](int64_t t_begin, int64_t t_end) {
      std::vector<float> xt(static_cast<size_t>(kTile * dim));
      std::vector<float> probe(static_cast<size_t>(dim));
      int32_t tile_codes[kTile];
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t b = t / n_tiles, i0 = (t % n_tiles) * kTile;
        const int64_t m = std::min(kTile, n - i0);
        const scalar_t* src = x_ptr + (b * n + i0) * dim;
        transpose_tile(isa, src, m, dim, path.width, xt.data());
        const float* cb = c_ptr + b * k * dim;
        path.fn(xt.data(), path.blocks_for(m), dim, cb, h.data() + b * k, k, tile_codes);
        const int64_t filled = (m + path.width - 1) / path.width * path.width * dim;
        if (tile_may_need_exact(isa, xt.data(), filled, probe.data(), dim, max_c[b])) {
          for (int64_t i = 0; i < m; ++i) {  // float32 scores that could overflow: ranked in float64
            if (kmeans_needs_exact(src + i * dim, dim, max_c[b])) {
              tile_codes[i] = static_cast<int32_t>(kmeans_argmin_exact(src + i * dim, cb, k, dim));
            }
          }
        }
        distances(isa, xt.data(), m, dim, path.width, cb, tile_codes, dist_ptr + b * n + i0);
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
