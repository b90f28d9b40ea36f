// Activation-aware (weighted) k-means arithmetic shared by the CPU kernels, the CUDA kernels and
// the emulation harness (issue 10; "And the bit goes down", Stock et al. 2020, section 3.1).
//
// A point x (a weight block of input columns j) and a centroid c are compared by
// (x - c)^T H (x - c), H = H_j the second moment of the block's input dimensions (symmetric,
// D x D, or its diagonal). Point n of a problem uses group g = n % G: the column of block n in the
// row-major block layout of W.reshape(out, -1). Every device computes, in this order (fp32, fmaf):
//   hc_e(c)      = fma chain over f of H[e][f] * c_f, from 0         (diagonal: H[e] * c_e)
//   half_norm(c) = 0.5 * (fma chain over e of c_e * hc_e(c), from 0)  (= 0.5 c^T H c)
//   score(x, c)  = fma chain over e of -x_e * hc_e(c), from half_norm(c)
//   code(x)      = the LOWEST k whose score equals the minimum score (strict < while k rises)
//   dist(x)      = (x - c)^T H (x - c) for c = c_code: fma chain over e of d_e * (H d)_e, from 0,
//                  d = x - c and (H d)_e an fma chain over f as hc_e.
// so the codes agree bit for bit between devices and ISA paths.
#pragma once

#include <cmath>
#include <cstdint>

#include "quantnoise/macros.h"

namespace quantnoise {

// (H c)_e for H of one group: [D][D] row-major, or [D] when diag.
QN_INLINE float kmeans_weighted_hc(const float* h, const float* c, int64_t e, int64_t dim, bool diag) {
  if (diag) return h[e] * c[e];
  float acc = 0.0f;
  for (int64_t f = 0; f < dim; ++f) acc = fmaf(h[e * dim + f], c[f], acc);
  return acc;
}

// 0.5 * c^T H c from c and hc = H c.
QN_INLINE float kmeans_weighted_half_norm(const float* c, const float* hc, int64_t dim) {
  float acc = 0.0f;
  for (int64_t e = 0; e < dim; ++e) acc = fmaf(c[e], hc[e], acc);
  return 0.5f * acc;
}

// (x - c)^T H (x - c); x of any float type (read as float).
template <typename X>
QN_INLINE float kmeans_weighted_distance(const float* h, const X* x, const float* c, int64_t dim, bool diag) {
  float acc = 0.0f;
  for (int64_t e = 0; e < dim; ++e) {
    const float de = static_cast<float>(x[e]) - c[e];
    float hd;
    if (diag) {
      hd = h[e] * de;
    } else {
      hd = 0.0f;
      for (int64_t f = 0; f < dim; ++f) hd = fmaf(h[e * dim + f], static_cast<float>(x[f]) - c[f], hd);
    }
    acc = fmaf(de, hd, acc);
  }
  return acc;
}

}  // namespace quantnoise
