// k-means++ seeding (D^2 sampling, Arthur & Vassilvitskii 2007) as one deterministic rule shared by
// the CPU kernels, the CUDA kernels and the emulation harness, so a seed picks the same points on
// every device and with any number of threads.
//
// Step s of problem b has the weights w_i = min over the chosen points c of kmeans_squared_distance
// (x_i, c) (float32, quantnoise/kmeans.h) and a uniform draw u01 in [0, 1) (float64, drawn by the
// caller from torch's generator). Sums are float64, in this fixed order:
//   chunks        the points in chunks of kKMeansPPChunk (the last one shorter);
//   chunk weight  lane l (0..31) adds, in point order, the w_i of the chunk's points i = l (mod 32),
//                 starting from 0; the 32 lanes are then combined as a warp's shuffle-down tree
//                 (offsets 16, 8, 4, 2, 1: lane l += lane l + offset);
//   total         the chunk weights added in chunk order, from 0.
// The point drawn is the one whose prefix interval contains u = u01 * total: the first chunk j whose
// running total exceeds u, then, with rest = u - (the running total before j), the first point of
// that chunk whose running sum of weights (in point order, from 0) exceeds rest. Rounding can leave
// rest at or above the chunk's last running sum: then the chunk's last point of positive weight.
// A point of weight 0 (one already chosen, or a duplicate of one) is never drawn. When every weight
// is 0 (fewer distinct points than centroids), the draw is uniform: point floor(u01 * N).
// In exact arithmetic this is the textbook rule (first i with cumsum(w)[i] > u01 * sum(w)); the
// chunked sums make it parallel and change a pick only when u lies within float64 rounding of a
// boundary between two points.
#pragma once

#include <cstdint>

#include "quantnoise/macros.h"

namespace quantnoise {

constexpr int64_t kKMeansPPChunk = 1024;  // points per chunk (a multiple of kKMeansPPLanes)
constexpr int kKMeansPPLanes = 32;        // lane accumulators per chunk

QN_INLINE int64_t kmeanspp_n_chunks(int64_t n) { return (n + kKMeansPPChunk - 1) / kKMeansPPChunk; }

// Combines the 32 lane sums of a chunk (overwrites `lanes`) into the chunk weight.
QN_INLINE double kmeanspp_combine_lanes(double* lanes) {
  for (int offset = kKMeansPPLanes / 2; offset > 0; offset /= 2) {
    for (int l = 0; l < offset; ++l) lanes[l] += lanes[l + offset];
  }
  return lanes[0];
}

// The chunk weight of w[0..m) (m <= kKMeansPPChunk) by the rule above, one point at a time.
QN_INLINE double kmeanspp_chunk_weight(const float* w, int64_t m) {
  double lanes[kKMeansPPLanes] = {};
  for (int64_t i = 0; i < m; ++i) lanes[i % kKMeansPPLanes] += static_cast<double>(w[i]);
  return kmeanspp_combine_lanes(lanes);
}

QN_INLINE double kmeanspp_total(const double* chunk_weights, int64_t n_chunks) {
  double total = 0.0;
  for (int64_t j = 0; j < n_chunks; ++j) total += chunk_weights[j];
  return total;
}

// The point (index in [0, n)) whose interval holds `target` (0 <= target, normally < the total of
// chunk_weights); w are the n weights the chunk weights were computed from. Returns -1 when every
// weight is 0.
QN_INLINE int64_t kmeanspp_sample(const float* w, const double* chunk_weights, int64_t n, double target) {
  const int64_t n_chunks = kmeanspp_n_chunks(n);
  int64_t chunk = -1, last_positive = -1;
  double before = 0.0, running = 0.0;
  for (int64_t j = 0; j < n_chunks; ++j) {
    const double next = running + chunk_weights[j];
    if (chunk_weights[j] > 0.0) {
      last_positive = j;
      before = running;
    }
    if (next > target) {
      chunk = j;
      before = running;
      break;
    }
    running = next;
  }
  if (chunk < 0) chunk = last_positive;  // target >= total (rounding)
  if (chunk < 0) return -1;
  const double rest = target - before;
  const int64_t begin = chunk * kKMeansPPChunk;
  const int64_t end = begin + kKMeansPPChunk < n ? begin + kKMeansPPChunk : n;
  double sum = 0.0;
  int64_t last = -1;
  for (int64_t i = begin; i < end; ++i) {
    if (w[i] > 0.0f) last = i;
    sum += static_cast<double>(w[i]);
    if (sum > rest) return i;  // rest >= 0: sum first exceeds it at a point of positive weight
  }
  return last;
}

// One draw of problem b: u01 in [0, 1). Returns the index of the point drawn.
QN_INLINE int64_t kmeanspp_draw(const float* w, const double* chunk_weights, int64_t n, double u01) {
  const int64_t n_chunks = kmeanspp_n_chunks(n);
  const double total = kmeanspp_total(chunk_weights, n_chunks);
  const int64_t pick = total > 0.0 ? kmeanspp_sample(w, chunk_weights, n, u01 * total) : -1;
  if (pick >= 0) return pick;
  const int64_t uniform = static_cast<int64_t>(u01 * static_cast<double>(n));
  return uniform < n ? uniform : n - 1;
}

}  // namespace quantnoise
