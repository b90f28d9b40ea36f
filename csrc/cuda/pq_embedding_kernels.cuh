// CUDA kernel body of quantnoise::pq_embedding (DESIGN §3.3). No ATen here: the emulation harness
// (csrc/emu/) compiles this file with g++ and runs it on CPU threads.
//
// pq_embedding_backward: grad_C[code(indices[n], j)][d] += grad[n][j*bs + d], accumulated per
// thread block in shared memory (when the codebook gradient fits) and added to global memory once;
// float atomics, so the summation order (the last bits) varies from run to run.
#pragma once

#include <cstdint>

#include "quantnoise/cuda_compat.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq.h"

namespace quantnoise {

// pq_embedding: out[n][j*bs + d] = C[codes[indices[n]][j]][d] (interchange codes), per element.
template <typename scalar_t, typename code_t, typename index_t>
__global__ void pq_embedding_kernel(const index_t* __restrict__ indices, const code_t* __restrict__ codes,
                                    const scalar_t* __restrict__ C, int64_t bs, int64_t n_blocks, int64_t numel,
                                    scalar_t* __restrict__ out) {
  const int64_t dim = n_blocks * bs;
  QN_GRID_STRIDE_LOOP(i, numel) {
    const int64_t n = i / dim, e = i - n * dim, j = e / bs, d = e - j * bs;
    const int64_t row = static_cast<int64_t>(indices[n]);
    out[i] = C[pq_code_at(codes, row, j, n_blocks, int64_t{1}) * bs + d];
  }
}

template <typename scalar_t, typename code_t, typename index_t>
void launch_pq_embedding(const index_t* indices, const code_t* codes, const scalar_t* C, int64_t bs, int64_t n_blocks,
                         int64_t numel, scalar_t* out, cudaStream_t stream) {
  QN_LAUNCH_KERNEL(grid_stride_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream,
                   pq_embedding_kernel<scalar_t, code_t, index_t>)
  (indices, codes, C, bs, n_blocks, numel, out);
}

constexpr int64_t kEmbBwdSmemBytes = 32 * 1024;

// grad [N][n_blocks*bs], indices [N], codes interchange [rows][n_blocks]; gc [K][bs] zeroed.
// use_smem: gc accumulates per thread block in shared memory first (K*bs values of T).
template <typename T, typename code_t, typename index_t>
__global__ void pq_embedding_backward_kernel(const T* __restrict__ grad, const index_t* __restrict__ indices,
                                             const code_t* __restrict__ codes, int64_t n_blocks, int64_t bs,
                                             int64_t numel, int64_t kbs, bool use_smem, T* __restrict__ gc) {
  QN_DYNAMIC_SHARED(T, part);  // [K][bs] when use_smem
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  T* acc = use_smem ? part : gc;
  if (use_smem) {
    for (int64_t e = tid; e < kbs; e += nt) part[e] = T(0);
    __syncthreads();
  }
  const int64_t dim = n_blocks * bs;
  QN_GRID_STRIDE_LOOP(i, numel) {
    const int64_t n = i / dim, e = i - n * dim, j = e / bs, d = e - j * bs;
    const int64_t k = pq_code_at(codes, static_cast<int64_t>(indices[n]), j, n_blocks, int64_t{1});
    atomicAdd(acc + k * bs + d, grad[i]);
  }
  if (use_smem) {
    __syncthreads();
    for (int64_t e = tid; e < kbs; e += nt) {
      if (part[e] != T(0)) atomicAdd(gc + e, part[e]);
    }
  }
}

template <typename T, typename code_t, typename index_t>
void launch_pq_embedding_backward(const T* grad, const index_t* indices, const code_t* codes, int64_t n_blocks,
                                  int64_t bs, int64_t numel, int64_t K, T* gc, cudaStream_t stream) {
  const int64_t kbs = K * bs;
  const bool use_smem = kbs * static_cast<int64_t>(sizeof(T)) <= kEmbBwdSmemBytes;
  // Few blocks when they accumulate in shared memory: each flushes K*bs atomics at its end.
  const int64_t max_blocks = use_smem ? 256 : (int64_t{1} << 20);
  QN_LAUNCH_KERNEL(grid_stride_blocks(numel, kThreadsPerBlock, max_blocks), kThreadsPerBlock,
                   use_smem ? static_cast<size_t>(kbs * sizeof(T)) : size_t{0}, stream,
                   pq_embedding_backward_kernel<T, code_t, index_t>)
  (grad, indices, codes, n_blocks, bs, numel, kbs, use_smem, gc);
}

}  // namespace quantnoise
