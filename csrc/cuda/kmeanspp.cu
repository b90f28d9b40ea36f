// CUDA launchers of quantnoise::kmeanspp_init, kmeanspp_step and kmeanspp_sample: checks, device
// guard, current stream, launch check. kmeanspp_init launches a step kernel and a pick kernel per
// step (2K launches, no host synchronisation: the pick kernel leaves the next centroid on the device).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "kmeanspp_kernels.cuh"
#include "quantnoise/checks.h"

namespace quantnoise {
namespace {

void check_grid(std::string_view op, int64_t batch) {
  QN_CHECK_VALUE(batch <= 65535, op, "x must hold at most 65535 problems on CUDA, got B=", batch);
}

at::Tensor kmeanspp_init_cuda(const at::Tensor& x, const at::Tensor& first, const at::Tensor& uniforms) {
  check_kmeanspp_init_args(x, first, uniforms);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), k = uniforms.size(1) + 1;
  at::Tensor indices = at::empty({batch, k}, x.options().dtype(at::kLong));
  if (batch == 0) return indices;
  check_grid("kmeanspp_init", batch);
  const at::Tensor xc = x.contiguous(), f = first.contiguous(), u = uniforms.contiguous();
  at::Tensor w = at::full({batch, n}, std::numeric_limits<float>::infinity(), x.options().dtype(at::kFloat));
  at::Tensor chunk_w = at::empty({batch, kmeanspp_n_chunks(n)}, x.options().dtype(at::kDouble));
  at::Tensor c = at::empty({batch, dim}, x.options().dtype(at::kFloat));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeanspp_init_cuda", [&] {
    const scalar_t* x_ptr = xc.const_data_ptr<scalar_t>();
    for (int64_t s = 0; s < k; ++s) {
      if (s > 0) {
        launch_kmeanspp_step<scalar_t>(x_ptr, w.mutable_data_ptr<float>(), c.const_data_ptr<float>(),
                                       chunk_w.mutable_data_ptr<double>(), batch, n, dim, stream);
      }
      launch_kmeanspp_pick<scalar_t>(x_ptr, w.const_data_ptr<float>(), chunk_w.const_data_ptr<double>(),
                                     f.const_data_ptr<int64_t>(), u.const_data_ptr<double>(),
                                     indices.mutable_data_ptr<int64_t>(), c.mutable_data_ptr<float>(), batch, n, dim, k,
                                     s, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return indices;
}

std::tuple<at::Tensor, at::Tensor> kmeanspp_step_cuda(const at::Tensor& x, const at::Tensor& dmin,
                                                      const at::Tensor& centroid) {
  check_kmeanspp_step_args(x, dmin, centroid);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2);
  at::Tensor w = dmin.contiguous().clone();
  at::Tensor chunk_w = at::empty({batch, kmeanspp_n_chunks(n)}, x.options().dtype(at::kDouble));
  if (batch == 0 || n == 0) return {w, chunk_w};
  check_grid("kmeanspp_step", batch);
  const at::Tensor xc = x.contiguous(), c = centroid.to(at::kFloat).contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "kmeanspp_step_cuda", [&] {
    launch_kmeanspp_step<scalar_t>(xc.const_data_ptr<scalar_t>(), w.mutable_data_ptr<float>(),
                                   c.const_data_ptr<float>(), chunk_w.mutable_data_ptr<double>(), batch, n, dim,
                                   stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {w, chunk_w};
}

at::Tensor kmeanspp_sample_cuda(const at::Tensor& dmin, const at::Tensor& chunk_weights, const at::Tensor& target) {
  check_kmeanspp_sample_args(dmin, chunk_weights, target);
  const c10::cuda::CUDAGuard guard(dmin.device());
  const int64_t batch = dmin.size(0), n = dmin.size(1);
  at::Tensor out = at::empty({batch}, dmin.options().dtype(at::kLong));
  if (batch == 0) return out;
  const at::Tensor w = dmin.contiguous(), cw = chunk_weights.contiguous(), t = target.contiguous();
  launch_kmeanspp_sample(w.const_data_ptr<float>(), cw.const_data_ptr<double>(), t.const_data_ptr<double>(),
                         out.mutable_data_ptr<int64_t>(), batch, n, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("kmeanspp_init", &kmeanspp_init_cuda);
  m.impl("kmeanspp_step", &kmeanspp_step_cuda);
  m.impl("kmeanspp_sample", &kmeanspp_sample_cuda);
}

}  // namespace quantnoise
