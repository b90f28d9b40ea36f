// CUDA launcher of quantnoise::pq_embedding: the shared checks, device guard, current stream,
// launch check; kernel body in pq_embedding_kernels.cuh. Codes in the interchange layout.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "pq_embedding_kernels.cuh"
#include "quantnoise/checks.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"

namespace quantnoise {
namespace {

at::Tensor pq_embedding_cuda(const at::Tensor& indices, const at::Tensor& codes, const at::Tensor& centroids,
                             const std::optional<at::Tensor>& centroid_scale,
                             const std::optional<at::Tensor>& centroid_zero_point,
                             std::optional<at::ScalarType> out_dtype) {
  const PQArgs a = check_pq_embedding_args(indices, codes, centroids, centroid_scale, centroid_zero_point, out_dtype);
  const PQShape& s = a.s;
  const at::ScalarType dtype = a.out_dtype;
  const c10::cuda::CUDAGuard guard(indices.device());
  at::Tensor out = at::empty(a.out_shape, centroids.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, dtype);
  const at::Tensor cc = codes.contiguous(), ii = indices.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pq_embedding_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(ii.scalar_type(), "pq_embedding_cuda_idx", [&] {
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_embedding", [&] {
        launch_pq_embedding<scalar_t, code_t, index_t>(ii.const_data_ptr<index_t>(), cc.const_data_ptr<code_t>(),
                                                       C.const_data_ptr<scalar_t>(), s.block_size, s.n_blocks,
                                                       out.numel(), out.mutable_data_ptr<scalar_t>(), stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return out;
}

at::Tensor pq_embedding_backward_cuda(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& codes,
                                      int64_t n_centroids) {
  const PQShape s = check_pq_embedding_backward_args(grad_out, indices, codes, n_centroids);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const at::ScalarType compute = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gc = at::zeros({s.n_centroids, s.block_size}, grad_out.options().dtype(compute));
  if (indices.numel() == 0 || s.n_blocks == 0) return gc;
  const at::Tensor g = grad_out.to(compute).contiguous(), cc = codes.contiguous(), ii = indices.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(compute, "pq_embedding_backward_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(ii.scalar_type(), "pq_embedding_backward_cuda_idx", [&] {
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_embedding_backward", [&] {
        launch_pq_embedding_backward<scalar_t, code_t, index_t>(
            g.const_data_ptr<scalar_t>(), ii.const_data_ptr<index_t>(), cc.const_data_ptr<code_t>(), s.n_blocks,
            s.block_size, g.numel(), s.n_centroids, gc.mutable_data_ptr<scalar_t>(), stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return gc;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("pq_embedding", &pq_embedding_cuda);
  m.impl("pq_embedding_backward", &pq_embedding_backward_cuda);
}

}  // namespace quantnoise
