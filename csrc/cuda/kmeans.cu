// CUDA launchers of quantnoise::kmeans_assign and quantnoise::kmeans_update: checks, device
// guard, current stream, launch check.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "kmeans_kernels.cuh"
#include "quantnoise/checks.h"

namespace quantnoise {
namespace {

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cuda(const at::Tensor& x, const at::Tensor& centroids) {
  check_kmeans_assign_args(x, centroids);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), k = centroids.size(1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor c = centroids.contiguous();
  at::Tensor codes = at::empty({batch, n}, x.options().dtype(at::kLong));
  at::Tensor dist = at::empty({batch, n}, x.options().dtype(at::kFloat));
  if (batch == 0 || n == 0) return {codes, dist};
  QN_CHECK_VALUE(batch <= 65535, "kmeans_assign", "x must hold at most 65535 problems on CUDA, got B=", batch);
  // 32 KiB of shared memory per tile of centroids (and at least one centroid).
  const int64_t tile_k = std::max<int64_t>(1, std::min<int64_t>(k, (32 * 1024 / 4) / (dim + 1)));
  const size_t smem = static_cast<size_t>(tile_k * (dim + 1)) * sizeof(float);
  QN_CHECK_VALUE(smem <= 48 * 1024, "kmeans_assign", "x's dimension D must be at most 12287 on CUDA, got ", dim);
  constexpr int threads = 256;
  const int64_t blocks_x = std::min<int64_t>((n + threads - 1) / threads, 4096);
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(batch));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_assign_cuda", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "kmeans_assign_cuda", [&] {
      kmeans_assign_kernel<x_t, scalar_t><<<grid, threads, smem, stream>>>(
          xc.const_data_ptr<x_t>(), c.const_data_ptr<scalar_t>(), codes.mutable_data_ptr<int64_t>(),
          dist.mutable_data_ptr<float>(), n, k, dim, tile_k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {codes, dist};
}

std::tuple<at::Tensor, at::Tensor> kmeans_update_cuda(const at::Tensor& x, const at::Tensor& codes,
                                                      int64_t n_centroids) {
  check_kmeans_update_args(x, codes, n_centroids);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), k = n_centroids;
  const at::Tensor xc = x.contiguous();
  const at::Tensor cc = codes.contiguous();
  at::Tensor sums = at::zeros({batch, k, dim}, x.options().dtype(at::kFloat));
  at::Tensor counts = at::zeros({batch, k}, x.options().dtype(at::kLong));
  if (batch == 0 || n == 0) return {sums, counts};
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((batch * n + threads - 1) / threads, int64_t{1} << 16);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_update_cuda", [&] {
    kmeans_update_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        xc.const_data_ptr<scalar_t>(), cc.const_data_ptr<int64_t>(), sums.mutable_data_ptr<float>(),
        reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>()), bad.mutable_data_ptr<int>(), batch,
        n, k, dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // One small device-to-host copy: out-of-range codes are a user error worth a sync.
  QN_CHECK_VALUE(bad.item<int>() == 0, "kmeans_update", "codes must lie in [0, n_centroids=", k, ")");
  return {sums, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("kmeans_assign", &kmeans_assign_cuda);
  m.impl("kmeans_update", &kmeans_update_cuda);
}

}  // namespace quantnoise
