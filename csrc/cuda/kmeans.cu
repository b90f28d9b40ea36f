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
#include "quantnoise/kmeans_host.h"

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
  QN_CHECK_VALUE(kmeans_assign_smem_bytes(k, dim) <= 48 * 1024, "kmeans_assign",
                 "x's dimension D must be at most 12287 on CUDA, got ", dim);
  const at::Tensor bounds = kmeans_centroid_bounds(c);  // [B]: which points need float64 scores
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_assign_cuda", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "kmeans_assign_cuda", [&] {
      launch_kmeans_assign<x_t, scalar_t>(xc.const_data_ptr<x_t>(), c.const_data_ptr<scalar_t>(),
                                          bounds.const_data_ptr<float>(), codes.mutable_data_ptr<int64_t>(),
                                          dist.mutable_data_ptr<float>(), batch, n, k, dim, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {codes, dist};
}

std::tuple<at::Tensor, at::Tensor> kmeans_update_cuda(const at::Tensor& x, const at::Tensor& codes,
                                                      int64_t n_centroids) {
  check_kmeans_update_args(x, codes, n_centroids);
  const c10::cuda::CUDAGuard guard(x.device());
  const KMeansUpdateIO io = kmeans_update_io(x, codes, n_centroids);
  if (io.empty()) return {io.sums, io.counts};
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "kmeans_update_cuda", [&] {
    launch_kmeans_update<scalar_t>(io.x.const_data_ptr<scalar_t>(), io.codes.const_data_ptr<int64_t>(),
                                   io.sums.mutable_data_ptr<float>(),
                                   reinterpret_cast<unsigned long long*>(io.counts.mutable_data_ptr<int64_t>()),
                                   bad.mutable_data_ptr<int>(), io.batch, io.n, io.k, io.dim, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // One small device-to-host copy: out-of-range codes are a user error worth a sync.
  QN_CHECK_VALUE(bad.item<int>() == 0, "kmeans_update", "codes must lie in [0, n_centroids=", io.k, ")");
  return {io.sums, io.counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("kmeans_assign", &kmeans_assign_cuda);
  m.impl("kmeans_update", &kmeans_update_cuda);
}

}  // namespace quantnoise
