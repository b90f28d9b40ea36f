// Test kernels for the race and barrier check (racecheck.h): each planted bug next to its
// correct twin, which must pass under every schedule (no false positives).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda_emu.h"

namespace quantnoise_emu_test {

// kmeans_update's M-step sums (csrc/cuda/kmeans_kernels.cuh): sums[code][d] += x[t][d],
// grid-stride. Bug (atomic=false): a plain += where two points share a code is a lost update.
__global__ void accumulate_kernel(const float* x, const int64_t* codes, float* sums, int64_t n, int64_t dim,
                                  bool atomic) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += stride) {
    const int64_t code = codes[t];
    for (int64_t d = 0; d < dim; ++d) {
      if (atomic) {
        atomicAdd(sums + code * dim + d, x[t * dim + d]);
      } else {
        sums[code * dim + d] += x[t * dim + d];
      }
    }
  }
}

// out[t] = sum of x [rows][64], one row at a time through a static __shared__ tile: the restaging
// loop of pq_linear's kernels (barrier, stage, barrier, consume). Bug (restage_sync=false): no
// barrier before restaging, so a thread overwrites the tile while others still read it.
constexpr int kTileWidth = 64;
template <int kWidth>  // a template, like the kernels: its static tile has a dynamic symbol
__global__ void tile_sum_kernel(const float* x, float* out, int64_t rows, bool restage_sync) {
  __shared__ float tile[kWidth];
  const int t = static_cast<int>(threadIdx.x);
  float acc = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    if (restage_sync) __syncthreads();  // the previous tile is consumed
    tile[t] = x[r * kWidth + t];
    __syncthreads();
    for (int i = 0; i < kWidth; ++i) acc += tile[(t + i) % kWidth];
  }
  out[t] = acc;
}

// out[l] = x[l] + x[(l + 1) % 32] through shared memory inside one warp, ordered by a full-warp
// collective (`order` = 1: __syncwarp, 2: a shuffle) or by nothing (0: the bug).
__global__ void warp_neighbour_kernel(const float* x, float* out, int order) {
  __shared__ float slots[32];
  const int lane = static_cast<int>(threadIdx.x);
  slots[lane] = x[lane];
  if (order == 1) __syncwarp();
  if (order == 2) (void)__shfl_sync(0xffffffffu, lane, 0);
  out[lane] = slots[lane] + slots[(lane + 1) % 32];
}

// Bug: every block writes out[0] (plain stores from different blocks are never ordered).
__global__ void cross_block_write_kernel(float* out) {
  if (threadIdx.x == 0) out[0] = static_cast<float>(blockIdx.x);
}

// Thread 0 of each block reads a static __shared__ word before anyone writes it, then writes it:
// shared memory is poisoned between blocks and launches, so every read sees 0xffffffff.
__global__ void stale_shared_kernel(int* out) {
  __shared__ int word[1];
  if (threadIdx.x != 0) return;
  out[blockIdx.x] = word[0];
  word[0] = static_cast<int>(blockIdx.x);
}

namespace {

at::Tensor accumulate(const at::Tensor& x, const at::Tensor& codes, int64_t k, int64_t threads, int64_t blocks,
                      bool atomic) {
  const int64_t n = x.size(0), dim = x.size(1);
  at::Tensor sums = at::zeros({k, dim}, at::kFloat);
  QN_LAUNCH_KERNEL(blocks, threads, 0, nullptr, accumulate_kernel)
  (x.const_data_ptr<float>(), codes.const_data_ptr<int64_t>(), sums.mutable_data_ptr<float>(), n, dim, atomic);
  return sums;
}

at::Tensor tile_sum(const at::Tensor& x, bool restage_sync) {
  at::Tensor out = at::empty({kTileWidth}, at::kFloat);
  QN_LAUNCH_KERNEL(1, kTileWidth, 0, nullptr, tile_sum_kernel<kTileWidth>)
  (x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), x.size(0), restage_sync);
  return out;
}

at::Tensor warp_neighbour(const at::Tensor& x, int64_t order) {
  at::Tensor out = at::empty({32}, at::kFloat);
  QN_LAUNCH_KERNEL(1, 32, 0, nullptr, warp_neighbour_kernel)
  (x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), static_cast<int>(order));
  return out;
}

at::Tensor cross_block_write(int64_t blocks) {
  at::Tensor out = at::zeros({1}, at::kFloat);
  QN_LAUNCH_KERNEL(blocks, 32, 0, nullptr, cross_block_write_kernel)(out.mutable_data_ptr<float>());
  return out;
}

at::Tensor stale_shared(int64_t blocks) {
  at::Tensor out = at::zeros({blocks}, at::kInt);
  QN_LAUNCH_KERNEL(blocks, 32, 0, nullptr, stale_shared_kernel)(out.mutable_data_ptr<int>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(quantnoise_emu_test, m) {
  m.def("set_race_check(bool on) -> ()", [](bool on) { qn_emu::settings().race_check = on; });
  m.def("race_check_active() -> bool", [] { return qn_emu::settings().race_check && qn_emu::race_check_available(); });
  m.def("race_check_available() -> bool", [] { return qn_emu::race_check_available(); });
  m.def("accumulate(Tensor x, Tensor codes, int k, int threads, int blocks, bool atomic) -> Tensor", &accumulate);
  m.def("tile_sum(Tensor x, bool restage_sync) -> Tensor", &tile_sum);
  m.def("warp_neighbour(Tensor x, int order) -> Tensor", &warp_neighbour);
  m.def("cross_block_write(int blocks) -> Tensor", &cross_block_write);
  m.def("stale_shared(int blocks) -> Tensor", &stale_shared);
}

}  // namespace quantnoise_emu_test
