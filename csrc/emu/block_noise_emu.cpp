// Emulated CUDA launcher of quantnoise::block_noise: block_noise.cu without the device guard
// and stream, running block_noise_kernels.cuh through the harness on CPU tensors.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>

#include "emu_registry.h"
#include "quantnoise/checks.h"
// The harness comes after ATen and before the kernel body.
#include "cuda_emu.h"
//
#include "../cuda/block_noise_kernels.cuh"

namespace quantnoise {
namespace {

at::Tensor block_noise_emu(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                           int64_t offset, bool rescale, bool straight_through, c10::string_view noise) {
  (void)straight_through;
  check_block_noise_args(weight, seed, p, block_size, rescale, noise);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (w.numel() == 0) return out;
  // The seed "on the device" path of the CUDA launcher: the kernel reads it from memory.
  const at::Tensor seed_mem = seed.contiguous();
  const BlockRng rng = make_block_rng(0, offset, p);
  const double scale = rescale ? 1.0 / (1.0 - p) : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_emu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    launch_block_noise_drop<scalar_t, opmath_t>(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                                w.numel(), block_size, rng, seed_mem.const_data_ptr<int64_t>(),
                                                static_cast<opmath_t>(scale), nullptr);
  });
  return out;
}

// noisy_linear's CUDA launchers compose block_noise_cuda with cuBLAS; here with ATen on the CPU.
at::Tensor noisy_linear_emu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const at::Tensor& seed, double p, int64_t block_size, int64_t offset, bool rescale,
                            bool straight_through) {
  check_noisy_linear_args(input, weight, bias, seed, p, block_size, rescale);
  return at::linear(input, block_noise_emu(weight, seed, p, block_size, offset, rescale, straight_through, "drop"),
                    bias);
}

at::Tensor noisy_linear_backward_input_emu(const at::Tensor& grad_output, const at::Tensor& weight,
                                           const at::Tensor& seed, double p, int64_t block_size, int64_t offset,
                                           bool rescale) {
  check_noisy_linear_backward_args(grad_output, weight, seed, p, block_size, rescale);
  return at::matmul(grad_output, block_noise_emu(weight, seed, p, block_size, offset, rescale, true, "drop"));
}

}  // namespace

QN_EMU_LIBRARY_IMPL(m) {
  m.impl("block_noise", &block_noise_emu);
  m.impl("noisy_linear", &noisy_linear_emu);
  m.impl("noisy_linear_backward_input", &noisy_linear_backward_input_emu);
}

}  // namespace quantnoise
