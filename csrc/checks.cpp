#include "quantnoise/checks.h"

#include <cmath>

namespace quantnoise {

bool is_supported_float(c10::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble;
}

void check_seed(std::string_view op, const at::Tensor& seed, const c10::Device& device) {
  QN_CHECK_TYPE(seed.scalar_type() == at::kLong, op, "seed must be an int64 tensor, got dtype ", seed.scalar_type());
  QN_CHECK_VALUE(seed.numel() == 1, op, "seed must hold exactly one element, got shape ", seed.sizes());
  QN_CHECK_VALUE(seed.device().is_cpu() || seed.device() == device, op, "seed must be on the CPU or on ", device,
                 ", got ", seed.device());
}

int64_t seed_value_on_cpu(const at::Tensor& seed) { return seed.item<int64_t>(); }

void check_block_noise_args(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                            bool rescale, std::string_view noise, std::string_view op) {
  QN_CHECK_VALUE(noise == "drop", op, "noise must be one of {'drop'}, got '", noise, "'");
  QN_CHECK_TYPE(is_supported_float(weight.scalar_type()), op,
                "weight must be float32, float16, bfloat16 or float64, got dtype ", weight.scalar_type());
  QN_CHECK_VALUE(weight.dim() >= 2, op, "weight must have at least 2 dimensions [out, ...], got shape ",
                 weight.sizes());
  QN_CHECK_VALUE(block_size > 0, op, "block_size must be positive, got ", block_size);
  int64_t row = 1;  // product of sizes[1:], also meaningful when out == 0
  for (int64_t d = 1; d < weight.dim(); ++d) row *= weight.size(d);
  QN_CHECK_VALUE(row % block_size == 0, op, "block_size must divide the row length of weight (", row, " for shape ",
                 weight.sizes(), "), got block_size=", block_size);
  QN_CHECK_VALUE(std::isfinite(p) && p >= 0.0 && p <= 1.0, op, "p must be in [0, 1), got ", p);
  QN_CHECK_VALUE(!(rescale && p >= 1.0), op, "p must be in [0, 1) when rescale=True (survivors scale by 1/(1-p)), got ",
                 p);
  check_seed(op, seed, weight.device());
}

namespace {

// x must be [..., features] with weight's dtype and device.
void check_matmul_operand(std::string_view op, const char* name, const at::Tensor& x, const at::Tensor& weight,
                          int64_t features) {
  QN_CHECK_TYPE(x.scalar_type() == weight.scalar_type(), op, name, " must have weight's dtype ", weight.scalar_type(),
                ", got ", x.scalar_type());
  QN_CHECK_VALUE(x.device() == weight.device(), op, name, " must be on weight's device ", weight.device(), ", got ",
                 x.device());
  QN_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == features, op, name, " must have shape [..., ", features,
                 "] to match weight ", weight.sizes(), ", got ", x.sizes());
}

}  // namespace

void check_noisy_linear_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& seed, double p, int64_t block_size, bool rescale) {
  constexpr std::string_view op = "noisy_linear";
  QN_CHECK_VALUE(weight.dim() == 2, op, "weight must have shape [out, in], got ", weight.sizes());
  check_block_noise_args(weight, seed, p, block_size, rescale, "drop", op);
  check_matmul_operand(op, "input", input, weight, weight.size(1));
  if (bias.has_value()) {
    QN_CHECK_TYPE(bias->scalar_type() == weight.scalar_type(), op, "bias must have weight's dtype ",
                  weight.scalar_type(), ", got ", bias->scalar_type());
    QN_CHECK_VALUE(bias->device() == weight.device() && bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                   "bias must have shape [", weight.size(0), "] on ", weight.device(), ", got shape ", bias->sizes(),
                   " on ", bias->device());
  }
}

void check_noisy_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& seed,
                                      double p, int64_t block_size, bool rescale) {
  constexpr std::string_view op = "noisy_linear_backward_input";
  QN_CHECK_VALUE(weight.dim() == 2, op, "weight must have shape [out, in], got ", weight.sizes());
  check_block_noise_args(weight, seed, p, block_size, rescale, "drop", op);
  check_matmul_operand(op, "grad_output", grad_output, weight, weight.size(0));
}

}  // namespace quantnoise
