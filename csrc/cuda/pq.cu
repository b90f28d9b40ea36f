// CUDA launchers of quantnoise::pq_decode, pq_linear and pq_embedding: the shared checks, device
// guard, current stream, launch check; kernel bodies in pq_kernels.cuh.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "pq_kernels.cuh"
#include "quantnoise/checks.h"
#include "quantnoise/pq_host.h"

namespace quantnoise {

namespace {

at::Tensor pq_decode_cuda(const at::Tensor& codes, const at::Tensor& centroids, at::IntArrayRef shape,
                          const std::optional<at::Tensor>& centroid_scale,
                          const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                          std::optional<at::ScalarType> out_dtype) {
  const PQShape s = check_pq_codebook_args("pq_decode", codes, centroids, centroid_scale, centroid_zero_point,
                                           codes_transposed, codes.device());
  check_pq_decode_shape(s, shape);
  const at::ScalarType dtype = check_pq_out_dtype("pq_decode", centroids, out_dtype);
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor w = at::empty(shape, centroids.options().dtype(dtype));
  if (w.numel() == 0) return w;
  const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, dtype);
  const at::Tensor cc = codes.contiguous();
  const int64_t so = codes_transposed ? 1 : s.n_blocks, sj = codes_transposed ? s.out : 1;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pq_decode_cuda", [&] {
    if (codes.scalar_type() == at::kByte) {
      launch_pq_decode<scalar_t, uint8_t>(cc.const_data_ptr<uint8_t>(), so, sj, C.const_data_ptr<scalar_t>(),
                                          s.block_size, s.n_blocks, w.numel(), w.mutable_data_ptr<scalar_t>(), stream);
    } else {
      launch_pq_decode<scalar_t, int32_t>(cc.const_data_ptr<int32_t>(), so, sj, C.const_data_ptr<scalar_t>(),
                                          s.block_size, s.n_blocks, w.numel(), w.mutable_data_ptr<scalar_t>(), stream);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return w;
}

// float64 x: decode W in float64 and multiply with cuBLAS (gradcheck only; the kernels are float32).
at::Tensor pq_linear_cuda(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& centroids,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& centroid_scale,
                          const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed, int64_t act_bits,
                          c10::string_view act_granularity, c10::string_view path) {
  const PQShape s = check_pq_codebook_args("pq_linear", codes, centroids, centroid_scale, centroid_zero_point,
                                           codes_transposed, x.device());
  check_pq_linear_args(x, s, bias, act_bits, act_granularity, path);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t in = s.n_blocks * s.block_size;
  const bool fp64 = x.scalar_type() == at::kDouble;
  const at::ScalarType compute = fp64 ? at::kDouble : at::kFloat;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = s.out;
  at::Tensor xf = x.reshape({-1, in}).to(compute).contiguous();
  const int64_t M = xf.size(0);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (act_bits > 0 && xf.numel() > 0) {
    const bool per_token = act_granularity == "token";
    // Ranges in float32 (the CPU kernel and the reference take them in float32 as well).
    const at::Tensor x32 = xf.to(at::kFloat);
    auto [lo, hi] = per_token ? at::aminmax(x32, 1) : at::aminmax(x32);
    lo = lo.contiguous();
    hi = hi.contiguous();
    at::Tensor xq = at::empty_like(x32);
    launch_pq_act_fake_quant(x32.const_data_ptr<float>(), lo.const_data_ptr<float>(), hi.const_data_ptr<float>(), in,
                             x32.numel(), static_cast<int>(act_bits), per_token, xq.mutable_data_ptr<float>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    xf = xq.to(compute);
  }
  at::Tensor y;
  if (fp64) {
    const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, compute);
    at::Tensor w = at::empty({s.out, in}, xf.options());
    if (w.numel() > 0) {
      const at::Tensor cc = codes.contiguous();
      const int64_t so = codes_transposed ? 1 : s.n_blocks, sj = codes_transposed ? s.out : 1;
      if (codes.scalar_type() == at::kByte) {
        launch_pq_decode<double, uint8_t>(cc.const_data_ptr<uint8_t>(), so, sj, C.const_data_ptr<double>(),
                                          s.block_size, s.n_blocks, w.numel(), w.mutable_data_ptr<double>(), stream);
      } else {
        launch_pq_decode<double, int32_t>(cc.const_data_ptr<int32_t>(), so, sj, C.const_data_ptr<double>(),
                                          s.block_size, s.n_blocks, w.numel(), w.mutable_data_ptr<double>(), stream);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    y = xf.mm(w.t());
    if (bias.has_value()) y.add_(bias->to(compute));
    return y.reshape(out_shape);
  }
  y = at::empty({M, s.out}, xf.options());
  if (M > 0 && s.out > 0) {
    if (in == 0) {
      y.zero_();
      if (bias.has_value()) y.add_(bias->to(compute));
    } else {
      const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, at::kFloat);
      const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
      const float* bias_ptr = b.defined() ? b.const_data_ptr<float>() : nullptr;
      const at::Tensor cc = codes.contiguous();
      const int64_t so = codes_transposed ? 1 : s.n_blocks, sj = codes_transposed ? s.out : 1;
      const bool gemv = path == "lut" || (path == "auto" && pq_cuda_use_gemv(M));
      auto run = [&](auto* codes_ptr) {
        using code_t = std::remove_const_t<std::remove_pointer_t<decltype(codes_ptr)>>;
        if (gemv) {
          launch_pq_linear_gemv<code_t>(xf.const_data_ptr<float>(), codes_ptr, so, sj, C.const_data_ptr<float>(),
                                        bias_ptr, M, s.out, s.n_blocks, s.n_centroids, s.block_size,
                                        y.mutable_data_ptr<float>(), stream);
        } else {
          launch_pq_linear_tile<code_t>(xf.const_data_ptr<float>(), codes_ptr, so, sj, C.const_data_ptr<float>(),
                                        bias_ptr, M, s.out, s.n_blocks, s.block_size, y.mutable_data_ptr<float>(),
                                        stream);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (codes.scalar_type() == at::kByte) {
        run(cc.const_data_ptr<uint8_t>());
      } else {
        run(cc.const_data_ptr<int32_t>());
      }
    }
  }
  return y.to(x.scalar_type()).reshape(out_shape);
}

at::Tensor pq_embedding_cuda(const at::Tensor& indices, const at::Tensor& codes, const at::Tensor& centroids,
                             const std::optional<at::Tensor>& centroid_scale,
                             const std::optional<at::Tensor>& centroid_zero_point,
                             std::optional<at::ScalarType> out_dtype) {
  const PQShape s = check_pq_codebook_args("pq_embedding", codes, centroids, centroid_scale, centroid_zero_point, false,
                                           indices.device());
  check_pq_embedding_indices(indices, s);
  const at::ScalarType dtype = check_pq_out_dtype("pq_embedding", centroids, out_dtype);
  const c10::cuda::CUDAGuard guard(indices.device());
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(s.n_blocks * s.block_size);
  at::Tensor out = at::empty(shape, centroids.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, dtype);
  const at::Tensor cc = codes.contiguous(), ii = indices.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pq_embedding_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(ii.scalar_type(), "pq_embedding_cuda_idx", [&] {
      if (codes.scalar_type() == at::kByte) {
        launch_pq_embedding<scalar_t, uint8_t, index_t>(ii.const_data_ptr<index_t>(), cc.const_data_ptr<uint8_t>(),
                                                        C.const_data_ptr<scalar_t>(), s.block_size, s.n_blocks,
                                                        out.numel(), out.mutable_data_ptr<scalar_t>(), stream);
      } else {
        launch_pq_embedding<scalar_t, int32_t, index_t>(ii.const_data_ptr<index_t>(), cc.const_data_ptr<int32_t>(),
                                                        C.const_data_ptr<scalar_t>(), s.block_size, s.n_blocks,
                                                        out.numel(), out.mutable_data_ptr<scalar_t>(), stream);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("pq_decode", &pq_decode_cuda);
  m.impl("pq_linear", &pq_linear_cuda);
  m.impl("pq_embedding", &pq_embedding_cuda);
}

}  // namespace quantnoise
