// k-means arithmetic shared by the CPU kernels, the CUDA kernels and the emulation harness.
//
// Every device computes the same numbers in the same order, so codes agree bit for bit:
//   half_norm(c)      = 0.5 * (fma chain over d of c_d * c_d, from 0)
//   score(x, c)       = fma chain over d of -x_d * c_d, starting from half_norm(c)
//                     = 0.5 * ||c||^2 - x.c  (= 0.5 * (||x - c||^2 - ||x||^2) up to rounding)
//   code(x)           = the LOWEST k whose score equals the minimum score (strict < while k rises)
//   dist(x)           = squared_distance(x, c_code): fma chain over d of (x_d - c_d)^2, from 0.
// Ranking by score is ranking by exact distance except where two distances differ by less than
// the rounding of the score (about 1e-7 relative to ||x||^2 + ||c||^2); exact ties (duplicated
// centroids, integer-valued data) always resolve to the lowest index.
//
// Non-finite values and overflow (the same rule on every device and CPU path):
//   - a NaN score never wins (strict < against a running best that starts at +inf), so a NaN
//     centroid is never chosen by a finite point;
//   - a point whose float32 scores could overflow (kmeans_needs_exact: |x| and |c| near 1e19 and
//     beyond, or a NaN/infinite coordinate) is ranked again with the same chain in float64
//     (kmeans_argmin_exact), where products of float32 values cannot overflow; all other points keep
//     their float32 codes bit for bit;
//   - a point with a NaN coordinate has only NaN scores: code 0, dist NaN.
#pragma once

#include <cmath>
#include <cstdint>

#include "quantnoise/macros.h"

namespace quantnoise {

// The largest codebook kmeans_assign accepts (codes fit int32 inside the kernels; iPQ uses <= 4096).
constexpr int64_t kKMeansMaxCentroids = 65536;

QN_INLINE float kmeans_half_norm(const float* c, int64_t dim) {
  float acc = 0.0f;
  for (int64_t d = 0; d < dim; ++d) acc = fmaf(c[d], c[d], acc);
  return 0.5f * acc;
}

// The largest |c| of a codebook, NaN ignored (the bound kmeans_needs_exact takes, one per problem).
template <typename T>
QN_INLINE float kmeans_max_abs(const T* c, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = fabsf(static_cast<float>(c[i]));
    m = a > m ? a : m;  // NaN compares false: ignored
  }
  return m;
}

// True when the float32 score chain of x against centroids bounded by max_c (kmeans_max_abs) may
// overflow or x is not finite. Every partial sum of the chain is at most
// dim * max_c * (0.5 * max_c + max|x|) in magnitude; below 2^126 float32 cannot overflow.
template <typename T>
QN_INLINE bool kmeans_needs_exact(const T* x, int64_t dim, float max_c) {
  float max_x = 0.0f;
  for (int64_t d = 0; d < dim; ++d) {
    const float a = fabsf(static_cast<float>(x[d]));
    if (!(a <= 3.40282347e38f)) return true;  // NaN or infinity
    max_x = a > max_x ? a : max_x;
  }
  const double bound = static_cast<double>(dim) * max_c * (0.5 * static_cast<double>(max_c) + max_x);
  return !(bound < 8.5070591730234616e37);  // 2^126; a NaN or infinite max_c: exact
}

// The code of x [dim] among centroids [k][dim] (row-major) in float64: the score chain above in
// double (fma, same order), strict <, so the lowest index wins ties and a NaN score never wins
// (code 0 when every score is NaN).
template <typename T, typename C>
QN_INLINE int64_t kmeans_argmin_exact(const T* x, const C* centroids, int64_t k, int64_t dim) {
  double best = INFINITY;
  int64_t code = 0;
  for (int64_t j = 0; j < k; ++j) {
    const C* c = centroids + j * dim;
    double h = 0.0;
    for (int64_t d = 0; d < dim; ++d) {
      const double cd = static_cast<double>(static_cast<float>(c[d]));
      h = fma(cd, cd, h);
    }
    double s = 0.5 * h;
    for (int64_t d = 0; d < dim; ++d) {
      s = fma(-static_cast<double>(static_cast<float>(x[d])), static_cast<double>(static_cast<float>(c[d])), s);
    }
    if (s < best) {
      best = s;
      code = j;
    }
  }
  return code;
}

QN_INLINE float kmeans_squared_distance(const float* x, const float* c, int64_t dim) {
  float acc = 0.0f;
  for (int64_t d = 0; d < dim; ++d) {
    const float diff = x[d] - c[d];
    acc = fmaf(diff, diff, acc);
  }
  return acc;
}

}  // namespace quantnoise
