// Test kernels for the harness itself (namespace quantnoise_emu_test, emulation build only):
// its primitives against known answers, and planted bugs it must catch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda_emu.h"

namespace quantnoise_emu_test {

// Bug: `i <= n` writes one element past the end of out (ASan: heap-buffer-overflow).
__global__ void planted_oob_write_kernel(float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;
}

// out[i] = x[i] + x[next in block], through dynamic shared memory. Without the __syncthreads a
// thread may read its neighbour's slot before the neighbour wrote it.
__global__ void neighbour_sum_kernel(const float* x, float* out, int64_t n, bool sync) {
  QN_DYNAMIC_SHARED(float, tile);
  const int t = threadIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + t;
  tile[t] = i < n ? x[i] : 0.0f;
  if (sync) __syncthreads();
  if (i < n) out[i] = tile[t] + tile[(t + 1) % blockDim.x];
}

// Bug: threads >= active return before the barrier.
__global__ void partial_barrier_kernel(float* out, int active) {
  __shared__ float total[1];
  if (static_cast<int>(threadIdx.x) >= active) return;
  if (threadIdx.x == 0) total[0] = 0.0f;
  __syncthreads();
  out[threadIdx.x] = total[0];
}

// Bug: lane 0 leaves while the rest of the warp shuffles with a full mask.
__global__ void partial_shuffle_kernel(int* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// Every warp primitive once; out is [n, 9] int32 (reference computed in the test).
__global__ void warp_ops_kernel(const int* x, int* out, int n, int* block_sums, int* max_value, int* cas_winners) {
  __shared__ int warp_totals[32];
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  const int lane = t % warpSize;
  const int v = i < n ? x[i] : 0;
  int* o = out + static_cast<int64_t>(i) * 9;
  const int from0 = __shfl_sync(0xffffffffu, v, 0);
  const int up = __shfl_up_sync(0xffffffffu, v, 1);
  const int down = __shfl_down_sync(0xffffffffu, v, 2);
  const int xr = __shfl_xor_sync(0xffffffffu, v, 1);
  const unsigned ballot = __ballot_sync(0xffffffffu, v > 0);
  const int any = __any_sync(0xffffffffu, v > 5);
  const int all = __all_sync(0xffffffffu, v > -100);
  int sum = v;  // warp tree reduction
  for (int offset = warpSize / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  sum = __shfl_sync(0xffffffffu, sum, 0);
  if (lane == 0) warp_totals[t / warpSize] = sum;
  __syncthreads();
  const int n_warps = (blockDim.x + warpSize - 1) / warpSize;
  int block_total = 0;
  for (int w = 0; w < n_warps; ++w) block_total += warp_totals[w];
  const int positives = __syncthreads_count(v > 0);
  if (i < n) {
    o[0] = from0, o[1] = up, o[2] = down, o[3] = xr, o[4] = static_cast<int>(ballot), o[5] = any, o[6] = all;
    o[7] = block_total, o[8] = positives;
  }
  atomicAdd(&block_sums[blockIdx.x], v);
  atomicMax(max_value, v);
  if (atomicCAS(cas_winners + blockIdx.x, 0, t + 1) == 0) atomicAdd(cas_winners + gridDim.x, 1);
}

namespace {

void set_schedule(c10::string_view policy, int64_t seed) {
  qn_emu::settings().schedule = qn_emu::parse_schedule(std::string(policy));
  qn_emu::settings().seed = static_cast<uint64_t>(seed);
}

at::Tensor planted_oob_write(int64_t n) {
  at::Tensor out = at::zeros({n}, at::kFloat);
  const int threads = 64;
  QN_LAUNCH_KERNEL((n + 1 + threads - 1) / threads, threads, 0, nullptr, planted_oob_write_kernel)
  (out.mutable_data_ptr<float>(), n);
  return out;
}

at::Tensor neighbour_sum(const at::Tensor& x, int64_t threads, bool sync) {
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t n = xc.numel();
  QN_LAUNCH_KERNEL((n + threads - 1) / threads, threads, threads * sizeof(float), nullptr, neighbour_sum_kernel)
  (xc.const_data_ptr<float>(), out.mutable_data_ptr<float>(), n, sync);
  return out;
}

at::Tensor partial_barrier(int64_t threads, int64_t active) {
  at::Tensor out = at::zeros({threads}, at::kFloat);
  QN_LAUNCH_KERNEL(1, threads, 0, nullptr, partial_barrier_kernel)(out.mutable_data_ptr<float>(), active);
  return out;
}

at::Tensor partial_shuffle() {
  at::Tensor out = at::zeros({32}, at::kInt);
  QN_LAUNCH_KERNEL(1, 32, 0, nullptr, partial_shuffle_kernel)(out.mutable_data_ptr<int>());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> warp_ops(const at::Tensor& x, int64_t threads) {
  const at::Tensor xc = x.contiguous();
  const int n = static_cast<int>(xc.numel());
  const int blocks = (n + threads - 1) / threads;
  at::Tensor out = at::zeros({blocks * threads, 9}, at::kInt);
  at::Tensor sums = at::zeros({blocks}, at::kInt);
  at::Tensor max_value = at::full({1}, -1000, at::kInt);
  at::Tensor cas = at::zeros({blocks + 1}, at::kInt);
  QN_LAUNCH_KERNEL(blocks, threads, 0, nullptr, warp_ops_kernel)
  (xc.const_data_ptr<int>(), out.mutable_data_ptr<int>(), n, sums.mutable_data_ptr<int>(),
   max_value.mutable_data_ptr<int>(), cas.mutable_data_ptr<int>());
  return {out.narrow(0, 0, n), sums, max_value, cas};
}

}  // namespace

TORCH_LIBRARY(quantnoise_emu_test, m) {
  m.def("set_schedule(str policy, int seed) -> ()", &set_schedule);
  m.def("launch_count() -> int", [] { return qn_emu::launch_count().load(); });
  m.def("planted_oob_write(int n) -> Tensor", &planted_oob_write);
  m.def("neighbour_sum(Tensor x, int threads, bool sync) -> Tensor", &neighbour_sum);
  m.def("partial_barrier(int threads, int active) -> Tensor", &partial_barrier);
  m.def("partial_shuffle() -> Tensor", &partial_shuffle);
  m.def("warp_ops(Tensor x, int threads) -> (Tensor, Tensor, Tensor, Tensor)", &warp_ops);
}

}  // namespace quantnoise_emu_test
