// CUDA kernel bodies of quantnoise::kmeanspp_init, kmeanspp_step and kmeanspp_sample (k-means++
// seeding by the rule of quantnoise/kmeanspp.h, the same on every device). No ATen here: the
// emulation harness (csrc/emu/) compiles this file with g++ and runs it on CPU threads.
#pragma once

#include <cstdint>

#include "quantnoise/cuda_compat.h"
#include "quantnoise/kmeanspp.h"

namespace quantnoise {

constexpr int kKMeansPPThreads = 256;

// One block per (chunk, problem) = (blockIdx.x, blockIdx.y). The threads update the chunk's weights,
// w = min(w, |x_i - c|^2) (the FMA chain of kmeans_squared_distance), and stage them in shared
// memory; then thread l < 32 adds lane l in point order and thread 0 combines the lanes.
// centroid: float32 [B, D], the point chosen last.
template <typename scalar_t>
__global__ void kmeanspp_step_kernel(const scalar_t* __restrict__ x,      // [B, N, D]
                                     float* __restrict__ w,               // [B, N], updated in place
                                     const float* __restrict__ centroid,  // [B, D]
                                     double* __restrict__ chunk_weights,  // [B, n_chunks]
                                     int64_t n, int64_t dim, int64_t n_chunks) {
  __shared__ float s_w[kKMeansPPChunk];
  __shared__ double s_lanes[kKMeansPPLanes];
  const int64_t b = blockIdx.y, begin = static_cast<int64_t>(blockIdx.x) * kKMeansPPChunk;
  const int64_t m = n - begin < kKMeansPPChunk ? n - begin : kKMeansPPChunk;
  const float* c = centroid + b * dim;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const scalar_t* xi = x + (b * n + begin + i) * dim;
    float s = 0.0f;
    for (int64_t d = 0; d < dim; ++d) {
      const float diff = static_cast<float>(xi[d]) - c[d];
      s = fmaf(diff, diff, s);
    }
    float* wi = w + b * n + begin + i;
    const float v = s < *wi ? s : *wi;
    *wi = v;
    s_w[i] = v;
  }
  __syncthreads();
  if (threadIdx.x < kKMeansPPLanes) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < m; i += kKMeansPPLanes) acc += static_cast<double>(s_w[i]);
    s_lanes[threadIdx.x] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) chunk_weights[b * n_chunks + blockIdx.x] = kmeanspp_combine_lanes(s_lanes);
}

// Step `step` of kmeanspp_init, one thread per problem: the first point (step 0) or a draw, written
// to indices[b][step]; the point's coordinates become centroid[b] for the next step kernel.
template <typename scalar_t>
__global__ void kmeanspp_pick_kernel(const scalar_t* __restrict__ x, const float* __restrict__ w,
                                     const double* __restrict__ chunk_weights, const int64_t* __restrict__ first,
                                     const double* __restrict__ uniforms,  // [B, K-1]
                                     int64_t* __restrict__ indices,        // [B, K]
                                     float* __restrict__ centroid,         // [B, D]
                                     int64_t batch, int64_t n, int64_t dim, int64_t k, int64_t step) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int64_t n_chunks = kmeanspp_n_chunks(n);
  const int64_t pick =
      step == 0 ? first[b]
                : kmeanspp_draw(w + b * n, chunk_weights + b * n_chunks, n, uniforms[b * (k - 1) + step - 1]);
  indices[b * k + step] = pick;
  for (int64_t d = 0; d < dim; ++d) centroid[b * dim + d] = static_cast<float>(x[(b * n + pick) * dim + d]);
}

// kmeanspp_sample, one thread per problem.
__global__ void kmeanspp_sample_kernel(const float* __restrict__ w, const double* __restrict__ chunk_weights,
                                       const double* __restrict__ target, int64_t* __restrict__ out, int64_t batch,
                                       int64_t n, int64_t n_chunks) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < batch) out[b] = kmeanspp_sample(w + b * n, chunk_weights + b * n_chunks, n, target[b]);
}

// Launches, shared by the CUDA launchers (kmeanspp.cu) and the emulated ones.
template <typename scalar_t>
void launch_kmeanspp_step(const scalar_t* x, float* w, const float* centroid, double* chunk_weights, int64_t batch,
                          int64_t n, int64_t dim, cudaStream_t stream) {
  const int64_t n_chunks = kmeanspp_n_chunks(n);
  const dim3 grid(static_cast<unsigned>(n_chunks), static_cast<unsigned>(batch));
  QN_LAUNCH_KERNEL(grid, kKMeansPPThreads, 0, stream, kmeanspp_step_kernel<scalar_t>)
  (x, w, centroid, chunk_weights, n, dim, n_chunks);
}

template <typename scalar_t>
void launch_kmeanspp_pick(const scalar_t* x, const float* w, const double* chunk_weights, const int64_t* first,
                          const double* uniforms, int64_t* indices, float* centroid, int64_t batch, int64_t n,
                          int64_t dim, int64_t k, int64_t step, cudaStream_t stream) {
  constexpr int threads = 64;
  const unsigned blocks = static_cast<unsigned>((batch + threads - 1) / threads);
  QN_LAUNCH_KERNEL(blocks, threads, 0, stream, kmeanspp_pick_kernel<scalar_t>)
  (x, w, chunk_weights, first, uniforms, indices, centroid, batch, n, dim, k, step);
}

inline void launch_kmeanspp_sample(const float* w, const double* chunk_weights, const double* target, int64_t* out,
                                   int64_t batch, int64_t n, cudaStream_t stream) {
  constexpr int threads = 64;
  const unsigned blocks = static_cast<unsigned>((batch + threads - 1) / threads);
  QN_LAUNCH_KERNEL(blocks, threads, 0, stream, kmeanspp_sample_kernel)
  (w, chunk_weights, target, out, batch, n, kmeanspp_n_chunks(n));
}

}  // namespace quantnoise
