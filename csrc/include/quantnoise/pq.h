// Product-quantization helpers shared by the CPU and CUDA kernels (DESIGN §3.3).
//
// Weight layout: W.reshape(out, -1) is cut into blocks of block_size consecutive entries;
// block (o, j) is centroids[codes[o][j]]. Codes come in two layouts:
//   interchange [out, n_blocks]  (row-major, what files and other helpers exchange)
//   packed      [n_blocks, out]  (what the lookup kernels read: for an input block j, the codes
//                                 of consecutive outputs are contiguous; ops.pq_pack_codes,
//                                 the layers' `packed_codes`)
// The op schemas name the packed layout by their flag `codes_transposed=True` (a public argument
// name, kept); the C++ calls it packed everywhere else.
// Activation fake-quant: affine int-N per tensor or per row (token), straight-through backward.
#pragma once

#include <cmath>
#include <cstdint>

#include "quantnoise/macros.h"

namespace quantnoise {

// The affine grid of a range [lo, hi] widened to contain 0, with 2^bits levels. The reference
// (reference.py: _act_qparams) computes exactly these float32 operations in the same order.
struct AffineGrid {
  float scale;
  float zero_point;
  float qmax;
};

// A NaN range (a NaN in the tensor, or in the row per token) gives a NaN grid: every value of that
// tensor (row) fake-quantizes to NaN, as the reference's aminmax-based range does (act_range_update).
QN_INLINE AffineGrid make_affine_grid(float lo, float hi, int bits) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  if (lo != lo || hi != hi) return AffineGrid{NAN, NAN, qmax};
  lo = lo < 0.f ? lo : 0.f;
  hi = hi > 0.f ? hi : 0.f;
  float scale = (hi - lo) / qmax;
  if (!(scale > 0.f)) scale = 1.f;  // all-zero input: any grid holds it exactly
  float zp = rintf(-lo / scale);
  zp = zp < 0.f ? 0.f : (zp > qmax ? qmax : zp);
  return AffineGrid{scale, zp, qmax};
}

// One value into a running [lo, hi] range, NaN-propagating like torch.aminmax: once a NaN is seen
// the range stays NaN (std::min/std::max would skip it).
QN_INLINE void act_range_update(float v, float& lo, float& hi) {
  if (v != v || lo != lo) {
    lo = hi = v != v ? v : lo;
    return;
  }
  lo = v < lo ? v : lo;
  hi = v > hi ? v : hi;
}

// round-half-even(v / scale) + zp, clamped to [0, qmax], mapped back: (q - zp) * scale.
QN_INLINE float fake_quant_affine(float v, const AffineGrid& g) {
  float q = rintf(v / g.scale) + g.zero_point;
  q = q < 0.f ? 0.f : (q > g.qmax ? g.qmax : q);
  return (q - g.zero_point) * g.scale;
}

}  // namespace quantnoise

namespace quantnoise {

// Where the code of block (o, j) lives: codes[o * so + j * sj].
struct CodeStrides {
  int64_t so, sj;
};
QN_INLINE CodeStrides pq_code_strides(bool packed, int64_t out, int64_t n_blocks) {
  return packed ? CodeStrides{1, out} : CodeStrides{n_blocks, 1};
}

template <typename code_t>
QN_INLINE int64_t pq_code_at(const code_t* codes, int64_t o, int64_t j, int64_t so, int64_t sj) {
  return static_cast<int64_t>(codes[o * so + j * sj]);
}

// a * b rounded once, never contracted into an FMA by nvcc: squared distances must come out
// bit-identical on the CPU, the GPU and in the reference (ties and near-ties pick the same index).
template <typename T>  // float or double
QN_INLINE T qn_mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

// Index of the centroid of C [K][bs] nearest to `block` [bs] in squared L2, summed in opmath_t
// in order d = 0, 1, ...; ties go to the lowest index (strict <), as kmeans_assign. A NaN distance
// never wins (index 0 when all are NaN: a NaN in the block); when every distance is infinite or NaN
// in float32 (blocks and centroids past ~1.8e19 apart), the block is ranked again in float64.
template <typename opmath_t, typename scalar_t>
QN_INLINE int64_t nearest_centroid_in(const scalar_t* block, const scalar_t* C, int64_t K, int64_t bs,
                                      opmath_t* best_distance) {
  int64_t best = 0;
  opmath_t best_d = static_cast<opmath_t>(INFINITY);
  for (int64_t k = 0; k < K; ++k) {
    opmath_t d2 = opmath_t(0);
    for (int64_t d = 0; d < bs; ++d) {
      const opmath_t diff = static_cast<opmath_t>(block[d]) - static_cast<opmath_t>(C[k * bs + d]);
      d2 = d2 + qn_mul_rn(diff, diff);
    }
    if (d2 < best_d) {
      best = k;
      best_d = d2;
    }
  }
  *best_distance = best_d;
  return best;
}

template <typename opmath_t, typename scalar_t>
QN_INLINE int64_t nearest_centroid(const scalar_t* block, const scalar_t* C, int64_t K, int64_t bs) {
  opmath_t best_d;
  const int64_t best = nearest_centroid_in<opmath_t>(block, C, K, bs, &best_d);
  if (best_d < static_cast<opmath_t>(INFINITY)) return best;
  double exact_d;
  return nearest_centroid_in<double>(block, C, K, bs, &exact_d);
}

}  // namespace quantnoise
