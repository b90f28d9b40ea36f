// CUDA kernel body of quantnoise::pq_embedding (DESIGN §3.3). No ATen here: the emulation harness
// (csrc/emu/) compiles this file with g++ and runs it on CPU threads.
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
  QN_LAUNCH_KERNEL(grid_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream,
                   pq_embedding_kernel<scalar_t, code_t, index_t>)
  (indices, codes, C, bs, n_blocks, numel, out);
}

}  // namespace quantnoise
