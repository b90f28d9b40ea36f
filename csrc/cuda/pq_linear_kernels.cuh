// CUDA kernel bodies of quantnoise::pq_decode and quantnoise::pq_linear (DESIGN §3.3). No ATen
// here: the emulation harness (csrc/emu/) compiles this file with g++ and runs it on CPU threads.
// Codes in either layout, addressed through their strides (so, sj: quantnoise/pq.h).
//
// Every kernel reads float centroids C [K][bs] (int8 ones are dequantized by the launcher, a
// K x bs tensor). pq_linear computes in float32 on float32 activations (the launcher converts
// fp16/bf16 once; the CPU op does the same), so both devices and both paths agree to rounding.
//  * gemv (small batches): the codebook (when it fits, else read through L1) and a tile of up
//    to kGemvRows activation rows live in shared memory; each warp owns output rows, its lanes
//    walk the input elements (coalesced x and codes), decode each weight once and use it for
//    every staged activation row; a shuffle reduction finishes each output. On the GPU a
//    per-row lookup table (the CPU's LUT path) does not pay: it costs K*bs FMAs per input block
//    per thread block, more than the kGemvOutPerBlock outputs it would serve.
//  * tile (large batches): a plain 64x64x16 shared-memory GEMM whose weight tiles are decoded
//    from the codes straight into shared memory, 4x4 outputs per thread. The dense W never
//    exists in global memory.
//  * tile on tensor cores (large batches, fp16/bf16 x, or fp32 x when TF32 is allowed): the same
//    decode into shared memory, in the MMA's input type, then WMMA fragments (sm_80+, behind an
//    __CUDA_ARCH__ guard; below sm_80 and in the emulation harness the plain path of that kernel).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include "quantnoise/cuda_compat.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq.h"

namespace quantnoise {

// ---------------------------------------------------------------------------------------------
// pq_decode: W[o][j*bs + d] = C[code(o, j)][d], one thread per element, grid-stride.
template <typename scalar_t, typename code_t>
__global__ void pq_decode_kernel(const code_t* __restrict__ codes, int64_t so, int64_t sj,
                                 const scalar_t* __restrict__ C, int64_t bs, int64_t n_blocks, int64_t numel,
                                 scalar_t* __restrict__ W) {
  const int64_t row = n_blocks * bs;
  QN_GRID_STRIDE_LOOP(i, numel) {
    const int64_t o = i / row, e = i - o * row, j = e / bs, d = e - j * bs;
    W[i] = C[pq_code_at(codes, o, j, so, sj) * bs + d];
  }
}

template <typename scalar_t, typename code_t>
void launch_pq_decode(const code_t* codes, int64_t so, int64_t sj, const scalar_t* C, int64_t bs, int64_t n_blocks,
                      int64_t numel, scalar_t* W, cudaStream_t stream) {
  QN_LAUNCH_KERNEL(grid_stride_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream,
                   pq_decode_kernel<scalar_t, code_t>)
  (codes, so, sj, C, bs, n_blocks, numel, W);
}

// ---------------------------------------------------------------------------------------------
// Activation fake-quant (pq_linear act_bits > 0): xq = fq(x) with the grid of [lo[r], hi[r]]
// (per_token) or [lo[0], hi[0]]; the same float ops as the CPU kernel (pq.h).
template <typename T>  // T = float (a template so the header defines it once per program)
__global__ void pq_act_fake_quant_kernel(const T* __restrict__ x, const T* __restrict__ lo, const T* __restrict__ hi,
                                         int64_t in, int64_t numel, int bits, bool per_token, T* __restrict__ xq) {
  QN_GRID_STRIDE_LOOP(i, numel) {
    const int64_t r = per_token ? i / in : 0;
    xq[i] = fake_quant_affine(x[i], make_affine_grid(lo[r], hi[r], bits));
  }
}

inline void launch_pq_act_fake_quant(const float* x, const float* lo, const float* hi, int64_t in, int64_t numel,
                                     int bits, bool per_token, float* xq, cudaStream_t stream) {
  QN_LAUNCH_KERNEL(grid_stride_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream,
                   pq_act_fake_quant_kernel<float>)
  (x, lo, hi, in, numel, bits, per_token, xq);
}

// ---------------------------------------------------------------------------------------------
// pq_linear, small batches. Block: kGemvWarps warps; warp w owns outputs o0 + w*kGemvOutPerWarp
// + [0, kGemvOutPerWarp). Rows are processed kGemvRows at a time (grid-stride over row chunks in
// grid.y), the input in tiles of kGemvInTile elements staged in shared memory.
// Dynamic shared memory: [kGemvRows][kGemvInTile] floats of x, then the codebook if use_smem_c.
constexpr int kGemvWarps = 8;
constexpr int kGemvOutPerWarp = 4;
constexpr int kGemvOutPerBlock = kGemvWarps * kGemvOutPerWarp;
constexpr int kGemvRows = 4;
constexpr int kGemvInTile = 1024;
constexpr int64_t kGemvMaxSmemC = 32 * 1024;  // codebook bytes kept in shared memory (48 KiB total)

template <typename code_t>
__global__ void pq_linear_gemv_kernel(const float* __restrict__ x, const code_t* __restrict__ codes, int64_t so,
                                      int64_t sj, const float* __restrict__ C, const float* __restrict__ bias,
                                      int64_t M, int64_t out, int64_t n_blocks, int64_t K, int64_t bs, bool use_smem_c,
                                      float* __restrict__ y) {
  QN_DYNAMIC_SHARED(float, smem);
  float* xs = smem;                            // [kGemvRows][kGemvInTile]
  float* cs = smem + kGemvRows * kGemvInTile;  // [K][bs] when use_smem_c
  const int64_t in = n_blocks * bs;
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  if (use_smem_c) {
    for (int64_t e = tid; e < K * bs; e += blockDim.x) cs[e] = C[e];
    // made visible by the first __syncthreads of the tile loop below
  }
  const float* Cr = use_smem_c ? cs : C;
  const int64_t o_first = static_cast<int64_t>(blockIdx.x) * kGemvOutPerBlock + warp * kGemvOutPerWarp;
  const int64_t n_chunks = (M + kGemvRows - 1) / kGemvRows;
  for (int64_t chunk = blockIdx.y; chunk < n_chunks; chunk += gridDim.y) {
    const int64_t r0 = chunk * kGemvRows;
    const int rn = static_cast<int>(std::min<int64_t>(kGemvRows, M - r0));
    float acc[kGemvOutPerWarp][kGemvRows];
    for (int a = 0; a < kGemvOutPerWarp; ++a)
      for (int r = 0; r < kGemvRows; ++r) acc[a][r] = 0.f;
    for (int64_t i0 = 0; i0 < in; i0 += kGemvInTile) {
      const int tn = static_cast<int>(std::min<int64_t>(kGemvInTile, in - i0));
      __syncthreads();  // the previous tile is consumed (and the codebook is loaded)
      for (int e = tid; e < kGemvRows * kGemvInTile; e += blockDim.x) {
        const int r = e / kGemvInTile, i = e - r * kGemvInTile;
        xs[e] = (r < rn && i < tn) ? x[(r0 + r) * in + i0 + i] : 0.f;
      }
      __syncthreads();
      for (int a = 0; a < kGemvOutPerWarp; ++a) {
        const int64_t o = o_first + a;
        if (o >= out) break;  // uniform across the warp
        for (int i = lane; i < tn; i += 32) {
          const int64_t g = i0 + i, j = g / bs, d = g - j * bs;
          const float w = Cr[pq_code_at(codes, o, j, so, sj) * bs + d];
          for (int r = 0; r < kGemvRows; ++r) acc[a][r] += w * xs[r * kGemvInTile + i];
        }
      }
    }
    for (int a = 0; a < kGemvOutPerWarp; ++a) {
      const int64_t o = o_first + a;
      if (o >= out) break;
      for (int r = 0; r < kGemvRows; ++r) {
        float v = acc[a][r];
        for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0 && r < rn) y[(r0 + r) * out + o] = bias != nullptr ? v + bias[o] : v;
      }
    }
  }
}

inline int64_t pq_gemv_smem_bytes(int64_t K, int64_t bs) {
  const int64_t c_bytes = K * bs * static_cast<int64_t>(sizeof(float));
  return static_cast<int64_t>(kGemvRows) * kGemvInTile * sizeof(float) + (c_bytes <= kGemvMaxSmemC ? c_bytes : 0);
}

template <typename code_t>
void launch_pq_linear_gemv(const float* x, const code_t* codes, int64_t so, int64_t sj, const float* C,
                           const float* bias, int64_t M, int64_t out, int64_t n_blocks, int64_t K, int64_t bs, float* y,
                           cudaStream_t stream) {
  const bool use_smem_c = K * bs * static_cast<int64_t>(sizeof(float)) <= kGemvMaxSmemC;
  const dim3 grid(grid_blocks(out, kGemvOutPerBlock, kMaxGridDimX), grid_stride_blocks(M, kGemvRows, kMaxGridDimY));
  QN_LAUNCH_KERNEL(grid, kGemvWarps * 32, static_cast<size_t>(pq_gemv_smem_bytes(K, bs)), stream,
                   pq_linear_gemv_kernel<code_t>)
  (x, codes, so, sj, C, bias, M, out, n_blocks, K, bs, use_smem_c, y);
}

// ---------------------------------------------------------------------------------------------
// pq_linear, large batches: y[M][out] = x[M][in] . W^T (+ bias), W decoded tile by tile into
// shared memory. Block (16 x 16 threads) computes a 64 x 64 tile of y; thread (tx, ty) owns
// rows ty + 16a and outputs tx + 16b (a, b < 4), so shared reads are conflict-free broadcasts.
constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kTileThreads = 256;

template <typename code_t>
__global__ void pq_linear_tile_kernel(const float* __restrict__ x, const code_t* __restrict__ codes, int64_t so,
                                      int64_t sj, const float* __restrict__ C, const float* __restrict__ bias,
                                      int64_t M, int64_t out, int64_t n_blocks, int64_t bs, float* __restrict__ y) {
  __shared__ float xs[kTileK][kTileM];  // x tile, transposed
  __shared__ float ws[kTileK][kTileN];  // W^T tile, decoded from the codes
  const int64_t in = n_blocks * bs;
  const int tid = static_cast<int>(threadIdx.x), tx = tid % 16, ty = tid / 16;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int64_t m_tiles = (M + kTileM - 1) / kTileM;
  for (int64_t mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
    const int64_t m0 = mt * kTileM;
    float acc[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) acc[a][b] = 0.f;
    for (int64_t k0 = 0; k0 < in; k0 += kTileK) {
      __syncthreads();  // the previous tiles are consumed
      for (int e = tid; e < kTileM * kTileK; e += kTileThreads) {
        const int mm = e / kTileK, kk = e - mm * kTileK;
        const int64_t m = m0 + mm, k = k0 + kk;
        xs[kk][mm] = (m < M && k < in) ? x[m * in + k] : 0.f;
      }
      for (int e = tid; e < kTileN * kTileK; e += kTileThreads) {
        const int nn = e / kTileK, kk = e - nn * kTileK;
        const int64_t o = n0 + nn, k = k0 + kk;
        float w = 0.f;
        if (o < out && k < in) {
          const int64_t j = k / bs;
          w = C[pq_code_at(codes, o, j, so, sj) * bs + (k - j * bs)];
        }
        ws[kk][nn] = w;
      }
      __syncthreads();
      for (int kk = 0; kk < kTileK; ++kk) {
        float xv[4], wv[4];
        for (int a = 0; a < 4; ++a) xv[a] = xs[kk][ty + 16 * a];
        for (int b = 0; b < 4; ++b) wv[b] = ws[kk][tx + 16 * b];
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) acc[a][b] += xv[a] * wv[b];
      }
    }
    for (int a = 0; a < 4; ++a) {
      const int64_t m = m0 + ty + 16 * a;
      if (m >= M) continue;
      for (int b = 0; b < 4; ++b) {
        const int64_t o = n0 + tx + 16 * b;
        if (o < out) y[m * out + o] = bias != nullptr ? acc[a][b] + bias[o] : acc[a][b];
      }
    }
  }
}

template <typename code_t>
void launch_pq_linear_tile(const float* x, const code_t* codes, int64_t so, int64_t sj, const float* C,
                           const float* bias, int64_t M, int64_t out, int64_t n_blocks, int64_t bs, float* y,
                           cudaStream_t stream) {
  const dim3 grid(grid_blocks(out, kTileN, kMaxGridDimX), grid_stride_blocks(M, kTileM, kMaxGridDimY));
  QN_LAUNCH_KERNEL(grid, kTileThreads, 0, stream, pq_linear_tile_kernel<code_t>)
  (x, codes, so, sj, C, bias, M, out, n_blocks, bs, y);
}

// ---------------------------------------------------------------------------------------------
// pq_linear, large batches on tensor cores: the decode-tile GEMM above with its inner products on
// WMMA fragments (sm_80+). Block (4 warps) computes a 64 x 64 tile of y: x tile and decoded W tile
// staged in shared memory in the MMA's input type (kMma: fp16, bf16, or tf32 kept in float), each
// warp a 32 x 32 quarter as 2 x 2 fragments of 16 x 16 with float accumulators. Below sm_80 and in
// the emulation harness the same tiles go through the plain path (float FMAs, 4 x 8 outputs per
// thread): same launch, same staging and decoding, so the harness tests everything but the MMA.
constexpr int kTcM = 64, kTcN = 64, kTcK = 32, kTcThreads = 128, kTcPad = 8;
enum PqMma : int { kMmaTf32 = 0, kMmaF16 = 1, kMmaBf16 = 2 };

#if defined(__CUDACC__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define QN_PQ_WMMA 1
#endif

template <int kMma>
struct PqMmaType {
  using T = float;  // tf32 operands are float in shared memory (rounded by the fragment load)
};
#if defined(__CUDACC__)
template <>
struct PqMmaType<kMmaF16> {
  using T = __half;
};
template <>
struct PqMmaType<kMmaBf16> {
  using T = __nv_bfloat16;
};
#endif

template <int kMma>
QN_INLINE typename PqMmaType<kMma>::T pq_to_mma(float v) {
#if defined(__CUDACC__)
  if constexpr (kMma == kMmaF16)
    return __float2half_rn(v);
  else if constexpr (kMma == kMmaBf16)
    return __float2bfloat16_rn(v);
  else
    return v;
#else
  return v;
#endif
}

template <int kMma>
QN_INLINE float pq_from_mma(typename PqMmaType<kMma>::T v) {
#if defined(__CUDACC__)
  if constexpr (kMma == kMmaF16)
    return __half2float(v);
  else if constexpr (kMma == kMmaBf16)
    return __bfloat162float(v);
  else
    return v;
#else
  return v;
#endif
}

template <typename code_t, int kMma>
__global__ void pq_linear_tile_tc_kernel(const float* __restrict__ x, const code_t* __restrict__ codes, int64_t so,
                                         int64_t sj, const float* __restrict__ C, const float* __restrict__ bias,
                                         int64_t M, int64_t out, int64_t n_blocks, int64_t bs, float* __restrict__ y) {
  using T = typename PqMmaType<kMma>::T;
  __shared__ T xs[kTcM][kTcK + kTcPad];  // x tile, row-major (matrix_a)
  __shared__ T ws[kTcN][kTcK + kTcPad];  // W tile [n][k]: W^T column-major (matrix_b)
  __shared__ float ys[kTcM][kTcN + 4];   // accumulators on their way out
  const int64_t in = n_blocks * bs;
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTcN;
  const int64_t m_tiles = (M + kTcM - 1) / kTcM;
  for (int64_t mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
    const int64_t m0 = mt * kTcM;
#if defined(QN_PQ_WMMA)
    namespace wmma = nvcuda::wmma;
    constexpr int kFragK = kMma == kMmaTf32 ? 8 : 16;
    using InA = std::conditional_t<kMma == kMmaTf32, wmma::precision::tf32, T>;
    wmma::fragment<wmma::accumulator, 16, 16, kFragK, float> acc[2][2];
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) wmma::fill_fragment(acc[a][b], 0.f);
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#else
    // plain path: thread (tx, ty) owns rows ty + 16a (a < 4) and outputs tx + 8b (b < 8)
    const int tx = tid % 8, ty = tid / 8;
    float acc[4][8];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 8; ++b) acc[a][b] = 0.f;
#endif
    for (int64_t k0 = 0; k0 < in; k0 += kTcK) {
      __syncthreads();  // the previous tiles are consumed
      for (int e = tid; e < kTcM * kTcK; e += kTcThreads) {
        const int mm = e / kTcK, kk = e - mm * kTcK;
        const int64_t m = m0 + mm, k = k0 + kk;
        xs[mm][kk] = pq_to_mma<kMma>((m < M && k < in) ? x[m * in + k] : 0.f);
      }
      for (int e = tid; e < kTcN * kTcK; e += kTcThreads) {
        const int nn = e / kTcK, kk = e - nn * kTcK;
        const int64_t o = n0 + nn, k = k0 + kk;
        float w = 0.f;
        if (o < out && k < in) {
          const int64_t j = k / bs;
          w = C[pq_code_at(codes, o, j, so, sj) * bs + (k - j * bs)];
        }
        ws[nn][kk] = pq_to_mma<kMma>(w);
      }
      __syncthreads();
#if defined(QN_PQ_WMMA)
      for (int kk = 0; kk < kTcK; kk += kFragK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kFragK, InA, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, kFragK, InA, wmma::col_major> fb[2];
        for (int a = 0; a < 2; ++a) {
          wmma::load_matrix_sync(fa[a], &xs[wm + 16 * a][kk], kTcK + kTcPad);
          wmma::load_matrix_sync(fb[a], &ws[wn + 16 * a][kk], kTcK + kTcPad);
          if constexpr (kMma == kMmaTf32) {
            for (int t = 0; t < fa[a].num_elements; ++t) fa[a].x[t] = wmma::__float_to_tf32(fa[a].x[t]);
            for (int t = 0; t < fb[a].num_elements; ++t) fb[a].x[t] = wmma::__float_to_tf32(fb[a].x[t]);
          }
        }
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 2; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
      }
#else
      for (int kk = 0; kk < kTcK; ++kk) {
        float xv[4], wv[8];
        for (int a = 0; a < 4; ++a) xv[a] = pq_from_mma<kMma>(xs[ty + 16 * a][kk]);
        for (int b = 0; b < 8; ++b) wv[b] = pq_from_mma<kMma>(ws[tx + 8 * b][kk]);
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 8; ++b) acc[a][b] += xv[a] * wv[b];
      }
#endif
    }
#if defined(QN_PQ_WMMA)
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b)
        wmma::store_matrix_sync(&ys[wm + 16 * a][wn + 16 * b], acc[a][b], kTcN + 4, wmma::mem_row_major);
#else
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 8; ++b) ys[ty + 16 * a][tx + 8 * b] = acc[a][b];
#endif
    __syncthreads();
    for (int e = tid; e < kTcM * kTcN; e += kTcThreads) {
      const int mm = e / kTcN, nn = e - mm * kTcN;
      const int64_t m = m0 + mm, o = n0 + nn;
      if (m < M && o < out) y[m * out + o] = bias != nullptr ? ys[mm][nn] + bias[o] : ys[mm][nn];
    }
  }
}

template <typename code_t, int kMma>
void launch_pq_linear_tile_tc(const float* x, const code_t* codes, int64_t so, int64_t sj, const float* C,
                              const float* bias, int64_t M, int64_t out, int64_t n_blocks, int64_t bs, float* y,
                              cudaStream_t stream) {
  const dim3 grid(grid_blocks(out, kTcN, kMaxGridDimX), grid_stride_blocks(M, kTcM, kMaxGridDimY));
  QN_LAUNCH_KERNEL(grid, kTcThreads, 0, stream, pq_linear_tile_tc_kernel<code_t, kMma>)
  (x, codes, so, sj, C, bias, M, out, n_blocks, bs, y);
}

// 'auto' on the GPU: the gemv kernel while a weight decoded once serves few rows (memory bound),
// the tiled GEMM once a 64-row tile is mostly full.
constexpr int64_t kGemvMaxRows = 16;
inline bool pq_cuda_use_gemv(int64_t M) { return M <= kGemvMaxRows; }

}  // namespace quantnoise
