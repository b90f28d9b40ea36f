// CUDA kernel body of quantnoise::pq_linear_backward (DESIGN §3.3): PQ training without the
// dense weight. No ATen here: the emulation harness (csrc/emu/) compiles this file with g++ and
// runs it on CPU threads.
//
// One thread block per (input block j, chunk of rows). Its threads walk the outputs (coalesced
// grad_y, and packed codes) and add grad_y[r][o] into the shared-memory bin S[r][code(o, j)]
// (shared atomics); then
//   grad_x[r][j*bs + d] = sum_k S[r][k] * C[k][d]           (the block owns these entries)
//   grad_C[k][d]       += sum_r S[r][k] * x[r][j*bs + d]     (global atomics: every block adds)
// The dense [out, in] weight and weight gradient never exist. A bin no code filled is skipped
// (flag hit[k]), not multiplied: 0 * NaN would give NaN where the dense product gives 0. Float atomics make the
// summation order, hence the last bits of both gradients, vary from run to run.
#pragma once

#include <algorithm>
#include <cstdint>

#include "quantnoise/cuda_compat.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq.h"

namespace quantnoise {

constexpr int kBwdThreads = 256;
constexpr int64_t kBwdMaxRows = 8;            // rows per chunk
constexpr int64_t kBwdSmemBytes = 32 * 1024;  // the bins S [rows][kc] must fit (+ kc int flags)

// Rows per chunk and bins per slice: all K bins of up to kBwdMaxRows rows when they fit in
// kBwdSmemBytes, else one row at a time and K in slices of kc bins (a pass over the outputs each).
struct PqBwdTiling {
  int64_t rows, kc;
};
template <typename T>
inline int64_t pq_bwd_smem_bytes(const PqBwdTiling& t) {
  return t.rows * t.kc * static_cast<int64_t>(sizeof(T)) + t.kc * static_cast<int64_t>(sizeof(int));
}
template <typename T>
inline PqBwdTiling pq_bwd_tiling(int64_t K) {
  const int64_t t = sizeof(T), flag = sizeof(int);
  const int64_t rows = std::min<int64_t>(kBwdMaxRows, (kBwdSmemBytes / K - flag) / t);
  return rows > 0 ? PqBwdTiling{rows, K} : PqBwdTiling{1, kBwdSmemBytes / (t + flag)};
}

// gy [M][out], x [M][in] (nullptr unless gc), codes (o, j) at o*so + j*sj, C [K][bs];
// gx [M][in] zeroed (nullptr: not wanted), gc [K][bs] zeroed (nullptr: not wanted).
template <typename T, typename code_t>
__global__ void pq_linear_backward_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                          const code_t* __restrict__ codes, int64_t so, int64_t sj,
                                          const T* __restrict__ C, int64_t M, int64_t out, int64_t n_blocks, int64_t K,
                                          int64_t bs, int64_t rows, int64_t kc, T* __restrict__ gx,
                                          T* __restrict__ gc) {
  QN_DYNAMIC_SHARED(T, S);  // [rows][kc]: the bins of codes k0 .. k0 + kc, then hit [kc]
  int* hit = reinterpret_cast<int*>(S + rows * kc);
  const int64_t j = blockIdx.x, in = n_blocks * bs;
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  const int64_t n_chunks = (M + rows - 1) / rows;
  for (int64_t chunk = blockIdx.y; chunk < n_chunks; chunk += gridDim.y) {
    const int64_t r0 = chunk * rows, rn = std::min<int64_t>(rows, M - r0);
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t kn = std::min<int64_t>(kc, K - k0);
      __syncthreads();  // the previous bins are consumed
      for (int64_t e = tid; e < rows * kc; e += nt) S[e] = T(0);
      for (int64_t e = tid; e < kc; e += nt) hit[e] = 0;
      __syncthreads();
      for (int64_t o = tid; o < out; o += nt) {
        const int64_t k = pq_code_at(codes, o, j, so, sj) - k0;
        if (k < 0 || k >= kn) continue;
        atomicOr(hit + k, 1);
        for (int64_t r = 0; r < rn; ++r) atomicAdd(S + r * kc + k, gy[(r0 + r) * out + o]);
      }
      __syncthreads();
      if (gx != nullptr) {  // this block owns these entries: plain adds across the slices
        for (int64_t e = tid; e < rn * bs; e += nt) {
          const int64_t r = e / bs, d = e - r * bs;
          T v = T(0);
          for (int64_t k = 0; k < kn; ++k)
            if (hit[k]) v += S[r * kc + k] * C[(k0 + k) * bs + d];
          gx[(r0 + r) * in + j * bs + d] += v;
        }
      }
      if (gc != nullptr) {
        for (int64_t e = tid; e < kn * bs; e += nt) {
          const int64_t k = e / bs, d = e - k * bs;
          if (!hit[k]) continue;  // an empty bin adds nothing
          T v = T(0);
          for (int64_t r = 0; r < rn; ++r) v += S[r * kc + k] * x[(r0 + r) * in + j * bs + d];
          atomicAdd(gc + k0 * bs + e, v);
        }
      }
    }
  }
}

template <typename T, typename code_t>
void launch_pq_linear_backward(const T* gy, const T* x, const code_t* codes, int64_t so, int64_t sj, const T* C,
                               int64_t M, int64_t out, int64_t n_blocks, int64_t K, int64_t bs, T* gx, T* gc,
                               cudaStream_t stream) {
  const PqBwdTiling t = pq_bwd_tiling<T>(K);
  const dim3 grid(grid_blocks(n_blocks, 1, kMaxGridDimX), grid_stride_blocks(M, t.rows, kMaxGridDimY));
  QN_LAUNCH_KERNEL(grid, kBwdThreads, static_cast<size_t>(pq_bwd_smem_bytes<T>(t)), stream,
                   pq_linear_backward_kernel<T, code_t>)
  (gy, x, codes, so, sj, C, M, out, n_blocks, K, bs, t.rows, t.kc, gx, gc);
}

}  // namespace quantnoise
