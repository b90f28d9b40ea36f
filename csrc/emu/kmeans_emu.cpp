// Emulated CUDA launchers of quantnoise::kmeans_assign and quantnoise::kmeans_update: kmeans.cu
// without the device guard and stream, running kmeans_kernels.cuh through the harness.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "emu_registry.h"
#include "quantnoise/checks.h"
// The harness comes after ATen and before the kernel body.
#include "cuda_emu.h"
//
#include "../cuda/kmeans_kernels.cuh"

namespace quantnoise {
namespace {

std::tuple<at::Tensor, at::Tensor> kmeans_assign_emu(const at::Tensor& x, const at::Tensor& centroids) {
  check_kmeans_assign_args(x, centroids);
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), k = centroids.size(1);
  const at::Tensor xc = x.contiguous();
  const at::Tensor c = centroids.contiguous();
  at::Tensor codes = at::empty({batch, n}, x.options().dtype(at::kLong));
  at::Tensor dist = at::empty({batch, n}, x.options().dtype(at::kFloat));
  if (batch == 0 || n == 0) return {codes, dist};
  QN_CHECK_VALUE(batch <= 65535, "kmeans_assign", "x must hold at most 65535 problems on CUDA, got B=", batch);
  QN_CHECK_VALUE(kmeans_assign_smem_bytes(k, dim) <= 48 * 1024, "kmeans_assign",
                 "x's dimension D must be at most 12287 on CUDA, got ", dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_assign_emu", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "kmeans_assign_emu", [&] {
      launch_kmeans_assign<x_t, scalar_t>(xc.const_data_ptr<x_t>(), c.const_data_ptr<scalar_t>(),
                                          codes.mutable_data_ptr<int64_t>(), dist.mutable_data_ptr<float>(), batch, n,
                                          k, dim, nullptr);
    });
  });
  return {codes, dist};
}

std::tuple<at::Tensor, at::Tensor> kmeans_update_emu(const at::Tensor& x, const at::Tensor& codes,
                                                     int64_t n_centroids) {
  check_kmeans_update_args(x, codes, n_centroids);
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), k = n_centroids;
  const at::Tensor xc = x.contiguous();
  const at::Tensor cc = codes.contiguous();
  at::Tensor sums = at::zeros({batch, k, dim}, x.options().dtype(at::kFloat));
  at::Tensor counts = at::zeros({batch, k}, x.options().dtype(at::kLong));
  if (batch == 0 || n == 0) return {sums, counts};
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeans_update_emu", [&] {
    launch_kmeans_update<scalar_t>(xc.const_data_ptr<scalar_t>(), cc.const_data_ptr<int64_t>(),
                                   sums.mutable_data_ptr<float>(),
                                   reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>()),
                                   bad.mutable_data_ptr<int>(), batch, n, k, dim, nullptr);
  });
  QN_CHECK_VALUE(bad.item<int>() == 0, "kmeans_update", "codes must lie in [0, n_centroids=", k, ")");
  return {sums, counts};
}

}  // namespace

QN_EMU_LIBRARY_IMPL(m) {
  m.impl("kmeans_assign", &kmeans_assign_emu);
  m.impl("kmeans_update", &kmeans_update_emu);
}

}  // namespace quantnoise
