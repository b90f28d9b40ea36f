// CUDA launcher of quantnoise::pq_linear_backward: the shared checks, device guard, current
// stream, launch check; kernel body in pq_linear_backward_kernels.cuh. Computes in float32
// (float64 for float64 grad_out).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "pq_linear_backward_kernels.cuh"
#include "quantnoise/checks.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"

namespace quantnoise {
namespace {

std::tuple<at::Tensor, at::Tensor> pq_linear_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& x, const at::Tensor& codes,
    const at::Tensor& centroids, const std::optional<at::Tensor>& centroid_scale,
    const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed, bool input_grad, bool centroids_grad) {
  const PQBackwardArgs a = check_pq_linear_backward_args(
      grad_out, x, codes, centroids, centroid_scale, centroid_zero_point, codes_transposed, input_grad, centroids_grad);
  const PQShape& s = a.s;
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t in = s.n_blocks * s.block_size;
  const at::ScalarType compute = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor gy = grad_out.reshape({-1, s.out}).to(compute).contiguous();
  const int64_t M = gy.size(0);
  at::Tensor gx =
      input_grad ? at::zeros({M, in}, gy.options()) : at::empty({0}, grad_out.options());  // the kernel adds
  at::Tensor gc =
      centroids_grad ? at::zeros({s.n_centroids, s.block_size}, gy.options()) : at::empty({0}, gy.options());
  if (M > 0 && s.out > 0 && in > 0 && (input_grad || centroids_grad)) {
    const at::Tensor xf = centroids_grad ? x->reshape({-1, in}).to(compute).contiguous() : at::Tensor();
    const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, compute);
    const at::Tensor cc = codes.contiguous();
    const CodeStrides st = pq_code_strides(codes_transposed, s.out, s.n_blocks);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(compute, "pq_linear_backward_cuda", [&] {
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_linear_backward", [&] {
        launch_pq_linear_backward<scalar_t, code_t>(
            gy.const_data_ptr<scalar_t>(), xf.defined() ? xf.const_data_ptr<scalar_t>() : nullptr,
            cc.const_data_ptr<code_t>(), st.so, st.sj, C.const_data_ptr<scalar_t>(), M, s.out, s.n_blocks,
            s.n_centroids, s.block_size, input_grad ? gx.mutable_data_ptr<scalar_t>() : nullptr,
            centroids_grad ? gc.mutable_data_ptr<scalar_t>() : nullptr, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (input_grad) gx = gx.to(grad_out.scalar_type()).reshape(a.grad_x_shape);
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) { m.impl("pq_linear_backward", &pq_linear_backward_cuda); }

}  // namespace quantnoise
