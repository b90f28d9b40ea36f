// Argument checks shared by the CPU and CUDA launchers (host only, uses ATen).
//
// Every message names the op, the argument and the value it got. Value errors raise Python
// ValueError, dtype errors TypeError; internal invariants use TORCH_INTERNAL_ASSERT.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

namespace quantnoise {

// "quantnoise::<op>: <argument> must ..., got <value>"
#define QN_CHECK_VALUE(cond, op, ...) TORCH_CHECK_VALUE(cond, "quantnoise::", op, ": ", __VA_ARGS__)
#define QN_CHECK_TYPE(cond, op, ...) TORCH_CHECK_TYPE(cond, "quantnoise::", op, ": ", __VA_ARGS__)

// Float dtypes the kernels compute in (double is supported for gradcheck).
bool is_supported_float(c10::ScalarType dtype);

// A seed is a one-element int64 tensor: on the CPU, or on `device` (read in-kernel there).
void check_seed(std::string_view op, const at::Tensor& seed, const c10::Device& device);
int64_t seed_value_on_cpu(const at::Tensor& seed);

// block_noise: weight [out, ...] float with row length divisible by block_size; p in [0, 1)
// (p == 1 allowed without rescale); noise is one of the implemented kinds.
void check_block_noise_args(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                            bool rescale, std::string_view noise, std::string_view op = "block_noise");

// noisy_linear: input [..., in] with weight's dtype and device, weight [out, in], bias [out] or
// None, and the block_noise conditions on weight.
void check_noisy_linear_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& seed, double p, int64_t block_size, bool rescale);
void check_noisy_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& seed,
                                      double p, int64_t block_size, bool rescale);

}  // namespace quantnoise
