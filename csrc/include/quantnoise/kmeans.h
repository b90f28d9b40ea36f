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

QN_INLINE float kmeans_squared_distance(const float* x, const float* c, int64_t dim) {
  float acc = 0.0f;
  for (int64_t d = 0; d < dim; ++d) {
    const float diff = x[d] - c[d];
    acc = fmaf(diff, diff, acc);
  }
  return acc;
}

}  // namespace quantnoise
