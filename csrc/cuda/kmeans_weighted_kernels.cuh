// CUDA kernel bodies of quantnoise::kmeans_assign_weighted and quantnoise::kmeans_update_weighted
// (issue 10). No ATen here: the emulation harness (csrc/emu/) compiles this file with g++ and runs
// it on CPU threads. Arithmetic: quantnoise/kmeans_weighted.h, the same as the CPU kernels'.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "quantnoise/cuda_compat.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/kmeans_weighted.h"

namespace quantnoise {

// One block per (problem b, group g, chunk of blockDim.x of the group's points n = g + i*G); one
// thread per point. The block stages the group's H, then per tile of `tile_k` centroids their
// H c rows and half norms in shared memory (every thread reads the same entry at the same time: a
// broadcast); inactive threads still take part in the barriers.
// Dynamic shared memory: hd + tile_k * (2 * D + 1) floats (hd = D*D, or D when diag).
template <typename scalar_t>
__global__ void kmeans_assign_weighted_kernel(const scalar_t* __restrict__ x,       // [B, N, D]
                                              const float* __restrict__ centroids,  // [B, K, D]
                                              const float* __restrict__ h,          // [B, G, hd]
                                              int64_t* __restrict__ codes,          // [B, N]
                                              float* __restrict__ dist,             // [B, N]
                                              int64_t n, int64_t k, int64_t dim, int64_t groups, bool diag,
                                              int64_t tile_k) {
  QN_DYNAMIC_SHARED(float, kmw_smem);
  const int64_t hd = diag ? dim : dim * dim;
  const int64_t per_group = n / groups;
  const int64_t chunks = (per_group + blockDim.x - 1) / blockDim.x;
  const int64_t bg = static_cast<int64_t>(blockIdx.x) / chunks;
  const int64_t b = bg / groups, g = bg % groups;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) % chunks) * blockDim.x + threadIdx.x;
  float* s_h = kmw_smem;             // [hd]
  float* s_c = s_h + hd;             // [tile_k][dim]
  float* s_hc = s_c + tile_k * dim;  // [tile_k][dim]
  float* s_q = s_hc + tile_k * dim;  // [tile_k]
  for (int64_t e = threadIdx.x; e < hd; e += blockDim.x) s_h[e] = h[bg * hd + e];
  const bool active = i < per_group;
  const int64_t point = b * n + g + (active ? i : 0) * groups;
  const scalar_t* xi = x + point * dim;
  const float* cb = centroids + b * k * dim;
  float best = INFINITY;
  int64_t code = 0;
  for (int64_t k0 = 0; k0 < k; k0 += tile_k) {
    const int64_t kt = (k - k0) < tile_k ? (k - k0) : tile_k;
    __syncthreads();  // s_h is written; the previous tile is no longer read
    for (int64_t e = threadIdx.x; e < kt * dim; e += blockDim.x) s_c[e] = cb[k0 * dim + e];
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kt * dim; e += blockDim.x) {
      s_hc[e] = kmeans_weighted_hc(s_h, s_c + (e / dim) * dim, e % dim, dim, diag);
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < kt; j += blockDim.x) {
      s_q[j] = kmeans_weighted_half_norm(s_c + j * dim, s_hc + j * dim, dim);
    }
    __syncthreads();
    if (active) {
      for (int64_t j = 0; j < kt; ++j) {
        float sc = s_q[j];
        for (int64_t e = 0; e < dim; ++e) sc = fmaf(-static_cast<float>(xi[e]), s_hc[j * dim + e], sc);
        if (sc < best) {  // strict: the lowest index wins ties, as on the CPU
          best = sc;
          code = k0 + j;
        }
      }
    }
  }
  if (active) {
    codes[point] = code;
    dist[point] = kmeans_weighted_distance(s_h, xi, cb + code * dim, dim, diag);
  }
}

// M-step statistics with atomics, grid-stride over the B*N points: per point's cluster, h_sums += H,
// hx_sums += H x, sums += x, counts += 1. Float atomics make the last bits depend on the order of
// arrival (the CPU kernel is deterministic). A code outside [0, k) sets *bad and is skipped.
template <typename scalar_t>
__global__ void kmeans_update_weighted_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ codes,
                                              const float* __restrict__ h, float* __restrict__ h_sums,
                                              float* __restrict__ hx_sums, float* __restrict__ sums,
                                              unsigned long long* __restrict__ counts, int* __restrict__ bad,
                                              int64_t batch, int64_t n, int64_t k, int64_t dim, int64_t groups,
                                              bool diag) {
  const int64_t hd = diag ? dim : dim * dim;
  const int64_t total = batch * n;
  QN_GRID_STRIDE_LOOP(t, total) {
    const int64_t b = t / n;
    const int64_t code = codes[t];
    if (code < 0 || code >= k) {
      atomicExch(bad, 1);
      continue;
    }
    const float* hg = h + (b * groups + (t % n) % groups) * hd;
    const scalar_t* xt = x + t * dim;
    const int64_t row = b * k + code;
    for (int64_t j = 0; j < hd; ++j) atomicAdd(h_sums + row * hd + j, hg[j]);
    for (int64_t e = 0; e < dim; ++e) {
      float acc;
      if (diag) {
        acc = hg[e] * static_cast<float>(xt[e]);
      } else {
        acc = 0.0f;
        for (int64_t f = 0; f < dim; ++f) acc = fmaf(hg[e * dim + f], static_cast<float>(xt[f]), acc);
      }
      atomicAdd(hx_sums + row * dim + e, acc);
      atomicAdd(sums + row * dim + e, static_cast<float>(xt[e]));
    }
    atomicAdd(counts + row, 1ULL);
  }
}

// Launch configurations, shared by the CUDA launchers (kmeans_weighted.cu) and the emulated ones.
// Centroids per shared-memory tile: what fits in kKMeansWeightedSmemBytes next to H (at least one).
constexpr int64_t kKMeansWeightedSmemBytes = 32 * 1024;
inline int64_t kmeans_assign_weighted_tile_k(int64_t k, int64_t dim, bool diag) {
  const int64_t hd = diag ? dim : dim * dim;
  return std::max<int64_t>(1, std::min<int64_t>(k, (kKMeansWeightedSmemBytes / 4 - hd) / (2 * dim + 1)));
}
inline size_t kmeans_assign_weighted_smem_bytes(int64_t k, int64_t dim, bool diag) {
  const int64_t hd = diag ? dim : dim * dim;
  return static_cast<size_t>(hd + kmeans_assign_weighted_tile_k(k, dim, diag) * (2 * dim + 1)) * sizeof(float);
}
// Blocks of the assignment grid: one per (problem, group, chunk of kThreadsPerBlock points).
inline int64_t kmeans_assign_weighted_blocks(int64_t batch, int64_t n, int64_t groups) {
  return batch * groups * ((n / groups + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

template <typename scalar_t>
void launch_kmeans_assign_weighted(const scalar_t* x, const float* centroids, const float* h, int64_t* codes,
                                   float* dist, int64_t batch, int64_t n, int64_t k, int64_t dim, int64_t groups,
                                   bool diag, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(kmeans_assign_weighted_blocks(batch, n, groups));
  QN_LAUNCH_KERNEL(blocks, kThreadsPerBlock, kmeans_assign_weighted_smem_bytes(k, dim, diag), stream,
                   kmeans_assign_weighted_kernel<scalar_t>)
  (x, centroids, h, codes, dist, n, k, dim, groups, diag, kmeans_assign_weighted_tile_k(k, dim, diag));
}

template <typename scalar_t>
void launch_kmeans_update_weighted(const scalar_t* x, const int64_t* codes, const float* h, float* h_sums,
                                   float* hx_sums, float* sums, unsigned long long* counts, int* bad, int64_t batch,
                                   int64_t n, int64_t k, int64_t dim, int64_t groups, bool diag, cudaStream_t stream) {
  QN_LAUNCH_KERNEL(grid_stride_blocks(batch * n, kThreadsPerBlock, int64_t{1} << 16), kThreadsPerBlock, 0, stream,
                   kmeans_update_weighted_kernel<scalar_t>)
  (x, codes, h, h_sums, hx_sums, sums, counts, bad, batch, n, k, dim, groups, diag);
}

}  // namespace quantnoise
