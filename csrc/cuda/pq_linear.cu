// CUDA launchers of quantnoise::pq_decode and quantnoise::pq_linear: the shared checks, device
// guard, current stream, launch check; kernel bodies in pq_linear_kernels.cuh.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "pq_linear_kernels.cuh"
#include "quantnoise/checks.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"

namespace quantnoise {

namespace {

// w (contiguous, scalar_t, [out, n_blocks * block_size] elements) = the weight the codes address in
// the dequantized centroids C (scalar_t); codes in either layout (codes_transposed: packed).
template <typename scalar_t>
void decode_into(const at::Tensor& codes, bool codes_transposed, const at::Tensor& C, const PQShape& s, at::Tensor& w,
                 cudaStream_t stream) {
  const at::Tensor cc = codes.contiguous();
  const CodeStrides st = pq_code_strides(codes_transposed, s.out, s.n_blocks);
  QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_decode", [&] {
    launch_pq_decode<scalar_t, code_t>(cc.const_data_ptr<code_t>(), st.so, st.sj, C.const_data_ptr<scalar_t>(),
                                       s.block_size, s.n_blocks, w.numel(), w.mutable_data_ptr<scalar_t>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor pq_decode_cuda(const at::Tensor& codes, const at::Tensor& centroids, at::IntArrayRef shape,
                          const std::optional<at::Tensor>& centroid_scale,
                          const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                          std::optional<at::ScalarType> out_dtype) {
  const PQArgs a =
      check_pq_decode_args(codes, centroids, shape, centroid_scale, centroid_zero_point, codes_transposed, out_dtype);
  const PQShape& s = a.s;
  const at::ScalarType dtype = a.out_dtype;
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor w = at::empty(shape, centroids.options().dtype(dtype));
  if (w.numel() == 0) return w;
  const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, dtype);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pq_decode_cuda",
                                  [&] { decode_into<scalar_t>(codes, codes_transposed, C, s, w, stream); });
  return w;
}

// float64 x: decode W in float64 and multiply with cuBLAS (gradcheck only; the kernels are float32).
at::Tensor pq_linear_cuda(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& centroids,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& centroid_scale,
                          const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed, int64_t act_bits,
                          c10::string_view act_granularity, c10::string_view path) {
  const PQArgs a = check_pq_linear_args(x, codes, centroids, bias, centroid_scale, centroid_zero_point,
                                        codes_transposed, act_bits, act_granularity, path);
  const PQShape& s = a.s;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t in = s.n_blocks * s.block_size;
  const bool fp64 = x.scalar_type() == at::kDouble;
  const at::ScalarType compute = fp64 ? at::kDouble : at::kFloat;
  at::Tensor xf = flatten_rows(x).to(compute).contiguous();
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
    if (w.numel() > 0) decode_into<double>(codes, codes_transposed, C, s, w, stream);
    y = xf.mm(w.t());
    if (bias.has_value()) y.add_(bias->to(compute));
    return y.reshape(a.out_shape);
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
      const CodeStrides st = pq_code_strides(codes_transposed, s.out, s.n_blocks);
      const bool gemv = path == "lut" || (path == "auto" && pq_cuda_use_gemv(M));
      // Tensor cores where the input already has their precision (fp16, bf16 x), or where the
      // user allowed TF32 for fp32 matmuls (torch.backends.cuda.matmul.allow_tf32), as cuBLAS does.
      const at::ScalarType xt = x.scalar_type();
      const int mma = xt == at::kHalf                         ? kMmaF16
                      : xt == at::kBFloat16                   ? kMmaBf16
                      : at::globalContext().allowTF32CuBLAS() ? kMmaTf32
                                                              : -1;
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_linear", [&] {
        const code_t* codes_ptr = cc.const_data_ptr<code_t>();
        if (gemv) {
          launch_pq_linear_gemv<code_t>(xf.const_data_ptr<float>(), codes_ptr, st.so, st.sj, C.const_data_ptr<float>(),
                                        bias_ptr, M, s.out, s.n_blocks, s.n_centroids, s.block_size,
                                        y.mutable_data_ptr<float>(), stream);
        } else if (mma < 0) {
          launch_pq_linear_tile<code_t>(xf.const_data_ptr<float>(), codes_ptr, st.so, st.sj, C.const_data_ptr<float>(),
                                        bias_ptr, M, s.out, s.n_blocks, s.block_size, y.mutable_data_ptr<float>(),
                                        stream);
        } else {
          auto tc = [&](auto kind) {
            launch_pq_linear_tile_tc<code_t, decltype(kind)::value>(
                xf.const_data_ptr<float>(), codes_ptr, st.so, st.sj, C.const_data_ptr<float>(), bias_ptr, M, s.out,
                s.n_blocks, s.block_size, y.mutable_data_ptr<float>(), stream);
          };
          if (mma == kMmaF16)
            tc(std::integral_constant<int, kMmaF16>{});
          else if (mma == kMmaBf16)
            tc(std::integral_constant<int, kMmaBf16>{});
          else
            tc(std::integral_constant<int, kMmaTf32>{});
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }
  return y.to(a.out_dtype).reshape(a.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("pq_decode", &pq_decode_cuda);
  m.impl("pq_linear", &pq_linear_cuda);
}

}  // namespace quantnoise
