// CUDA kernel bodies of quantnoise::kmeans_assign and quantnoise::kmeans_update. No ATen here:
// the emulation harness (csrc/emu/) compiles this file with g++ and runs it on CPU threads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "quantnoise/cuda_compat.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/kmeans.h"

namespace quantnoise {

// Centroids are staged through shared memory in tiles of `tile_k` rows (row-major [k][D], fp32,
// plus their half norms): every thread of a block reads the same centroid at the same time, a
// broadcast without bank conflicts. One thread per point, grid-stride over the points of problem
// blockIdx.y; a block walks its points in lock-step (inactive threads still take part in the
// barriers). Scores, tie rule and distance are those of quantnoise/kmeans.h, as on the CPU.
// Dynamic shared memory: tile_k * (D + 1) floats.
template <typename scalar_t, typename centroid_t>
__global__ void kmeans_assign_kernel(const scalar_t* __restrict__ x,            // [B, N, D]
                                     const centroid_t* __restrict__ centroids,  // [B, K, D]
                                     const float* __restrict__ max_c,           // [B] (kmeans_centroid_bounds)
                                     int64_t* __restrict__ codes,               // [B, N]
                                     float* __restrict__ dist,                  // [B, N]
                                     int64_t n, int64_t k, int64_t dim, int64_t tile_k) {
  QN_DYNAMIC_SHARED(float, kmeans_smem);
  float* s_c = kmeans_smem;                 // [tile_k][dim]
  float* s_h = kmeans_smem + tile_k * dim;  // [tile_k]
  const int64_t b = blockIdx.y;
  const scalar_t* xb = x + b * n * dim;
  const centroid_t* cb = centroids + b * k * dim;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    const bool active = i < n;
    const scalar_t* xi = xb + (active ? i : 0) * dim;
    float best = INFINITY;
    int64_t code = 0;
    for (int64_t k0 = 0; k0 < k; k0 += tile_k) {
      const int64_t kt = (k - k0) < tile_k ? (k - k0) : tile_k;
      __syncthreads();  // the previous tile is no longer read
      for (int64_t e = threadIdx.x; e < kt * dim; e += blockDim.x) s_c[e] = static_cast<float>(cb[k0 * dim + e]);
      __syncthreads();
      for (int64_t j = threadIdx.x; j < kt; j += blockDim.x) s_h[j] = kmeans_half_norm(s_c + j * dim, dim);
      __syncthreads();
      if (active) {
        for (int64_t j = 0; j < kt; ++j) {
          float s = s_h[j];
          for (int64_t d = 0; d < dim; ++d) s = fmaf(-static_cast<float>(xi[d]), s_c[j * dim + d], s);
          if (s < best) {  // strict: the lowest index wins ties, as on the CPU
            best = s;
            code = k0 + j;
          }
        }
      }
    }
    if (active && kmeans_needs_exact(xi, dim, max_c[b])) code = kmeans_argmin_exact(xi, cb, k, dim);
    if (active) {
      float acc = 0.0f;
      for (int64_t d = 0; d < dim; ++d) {
        const float diff = static_cast<float>(xi[d]) - static_cast<float>(cb[code * dim + d]);
        acc = fmaf(diff, diff, acc);
      }
      codes[b * n + i] = code;
      dist[b * n + i] = acc;
    }
  }
}

// M-step statistics with atomics: sums[b][code][d] += x, counts[b][code] += 1. Float atomics
// make the last bits of sums depend on the order of arrival (the CPU kernel is deterministic).
// A code outside [0, k) sets *bad to 1 and is skipped. Grid-stride over B*N points.
template <typename scalar_t>
__global__ void kmeans_update_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ codes,
                                     float* __restrict__ sums, unsigned long long* __restrict__ counts,
                                     int* __restrict__ bad, int64_t batch, int64_t n, int64_t k, int64_t dim) {
  const int64_t total = batch * n;
  QN_GRID_STRIDE_LOOP(t, total) {
    const int64_t b = t / n;
    const int64_t code = codes[t];
    if (code < 0 || code >= k) {
      atomicExch(bad, 1);
      continue;
    }
    for (int64_t d = 0; d < dim; ++d) {
      atomicAdd(sums + (b * k + code) * dim + d, static_cast<float>(x[t * dim + d]));
    }
    atomicAdd(counts + b * k + code, 1ULL);
  }
}

// Launch configurations, shared by the CUDA launchers (kmeans.cu) and the emulated ones
// (csrc/emu/kmeans_emu.cpp).
// Centroids per shared-memory tile: kKMeansAssignSmemBytes of shared memory (and at least one centroid).
constexpr int64_t kKMeansAssignSmemBytes = 32 * 1024;
inline int64_t kmeans_assign_tile_k(int64_t k, int64_t dim) {
  return std::max<int64_t>(1, std::min<int64_t>(k, (kKMeansAssignSmemBytes / 4) / (dim + 1)));
}
inline size_t kmeans_assign_smem_bytes(int64_t k, int64_t dim) {
  return static_cast<size_t>(kmeans_assign_tile_k(k, dim) * (dim + 1)) * sizeof(float);
}

template <typename scalar_t, typename centroid_t>
void launch_kmeans_assign(const scalar_t* x, const centroid_t* centroids, const float* max_c, int64_t* codes,
                          float* dist, int64_t batch, int64_t n, int64_t k, int64_t dim, cudaStream_t stream) {
  const dim3 grid(grid_stride_blocks(n, kThreadsPerBlock, 4096), static_cast<unsigned>(batch));
  QN_LAUNCH_KERNEL(grid, kThreadsPerBlock, kmeans_assign_smem_bytes(k, dim), stream,
                   kmeans_assign_kernel<scalar_t, centroid_t>)
  (x, centroids, max_c, codes, dist, n, k, dim, kmeans_assign_tile_k(k, dim));
}

template <typename scalar_t>
void launch_kmeans_update(const scalar_t* x, const int64_t* codes, float* sums, unsigned long long* counts, int* bad,
                          int64_t batch, int64_t n, int64_t k, int64_t dim, cudaStream_t stream) {
  QN_LAUNCH_KERNEL(grid_stride_blocks(batch * n, kThreadsPerBlock, int64_t{1} << 16), kThreadsPerBlock, 0, stream,
                   kmeans_update_kernel<scalar_t>)
  (x, codes, sums, counts, bad, batch, n, k, dim);
}

}  // namespace quantnoise
