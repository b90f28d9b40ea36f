// CUDA launchers of quantnoise::kmeans_assign_weighted and quantnoise::kmeans_update_weighted:
// checks, device guard, current stream, launch check.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "kmeans_weighted_kernels.cuh"
#include "quantnoise/checks.h"
#include "quantnoise/kmeans_weighted_host.h"

namespace quantnoise {
namespace {

std::tuple<at::Tensor, at::Tensor> kmeans_assign_weighted_cuda(const at::Tensor& x, const at::Tensor& centroids,
                                                               const at::Tensor& h) {
  const KMeansWeightedShape s = check_kmeans_assign_weighted_args(x, centroids, h);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t k = centroids.size(1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor c = centroids.to(at::kFloat).contiguous();
  const at::Tensor hc = h.contiguous();
  at::Tensor codes = at::empty({s.batch, s.n}, x.options().dtype(at::kLong));
  at::Tensor dist = at::empty({s.batch, s.n}, x.options().dtype(at::kFloat));
  if (s.batch == 0 || s.n == 0) return {codes, dist};
  QN_CHECK_VALUE(kmeans_assign_weighted_blocks(s.batch, s.n, s.groups) <= kMaxGridDimX, "kmeans_assign_weighted",
                 "x holds too many (problem, group) pairs for one CUDA grid, got B=", s.batch, ", G=", s.groups);
  QN_CHECK_VALUE(kmeans_assign_weighted_smem_bytes(k, s.dim, s.diag) <= 48 * 1024, "kmeans_assign_weighted",
                 "h of one group must fit in shared memory on CUDA (D*D + 2*D + 1 <= 12288 floats), got D=", s.dim);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_assign_weighted_cuda", [&] {
    launch_kmeans_assign_weighted<scalar_t>(xc.const_data_ptr<scalar_t>(), c.const_data_ptr<float>(),
                                            hc.const_data_ptr<float>(), codes.mutable_data_ptr<int64_t>(),
                                            dist.mutable_data_ptr<float>(), s.batch, s.n, k, s.dim, s.groups, s.diag,
                                            stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {codes, dist};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_update_weighted_cuda(const at::Tensor& x,
                                                                                       const at::Tensor& codes,
                                                                                       const at::Tensor& h,
                                                                                       int64_t n_centroids) {
  const KMeansWeightedShape s = check_kmeans_update_weighted_args(x, codes, h, n_centroids);
  const c10::cuda::CUDAGuard guard(x.device());
  KMeansWeightedUpdateIO io = kmeans_weighted_update_io(s, x, codes, h, n_centroids);
  if (io.empty()) return {io.h_sums, io.hx_sums, io.sums, io.counts};
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "kmeans_update_weighted_cuda", [&] {
    launch_kmeans_update_weighted<scalar_t>(
        io.x.const_data_ptr<scalar_t>(), io.codes.const_data_ptr<int64_t>(), io.h.const_data_ptr<float>(),
        io.h_sums.mutable_data_ptr<float>(), io.hx_sums.mutable_data_ptr<float>(), io.sums.mutable_data_ptr<float>(),
        reinterpret_cast<unsigned long long*>(io.counts.mutable_data_ptr<int64_t>()), bad.mutable_data_ptr<int>(),
        s.batch, s.n, io.k, s.dim, s.groups, s.diag, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // One small device-to-host copy: out-of-range codes are a user error worth a sync.
  QN_CHECK_VALUE(bad.item<int>() == 0, "kmeans_update_weighted", "codes must lie in [0, n_centroids=", io.k, ")");
  return {io.h_sums, io.hx_sums, io.sums, io.counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("kmeans_assign_weighted", &kmeans_assign_weighted_cuda);
  m.impl("kmeans_update_weighted", &kmeans_update_weighted_cuda);
}

}  // namespace quantnoise
