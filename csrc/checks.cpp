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
                            bool rescale, std::string_view noise) {
  constexpr std::string_view op = "block_noise";
  QN_CHECK_VALUE(noise == "drop", op, "noise must be one of {'drop'}, got '", noise, "'");
  QN_CHECK_TYPE(is_supported_float(weight.scalar_type()), op,
                "weight must be float32, float16, bfloat16 or float64, got dtype ", weight.scalar_type());
  QN_CHECK_VALUE(weight.dim() >= 2, op, "weight must have at least 2 dimensions [out, ...], got shape ",
                 weight.sizes());
  QN_CHECK_VALUE(block_size > 0, op, "block_size must be positive, got ", block_size);
  int64_t row = 1;  // product of sizes[1:], also meaningful when out == 0
  for (int64_t d = 1; d < weight.dim(); ++d) row *= weight.size(d);
  QN_CHECK_VALUE(row % block_size == 0, op, "block_size must divide the row length of weight (", row,
                 " for shape ", weight.sizes(), "), got block_size=", block_size);
  QN_CHECK_VALUE(std::isfinite(p) && p >= 0.0 && p <= 1.0, op, "p must be in [0, 1), got ", p);
  QN_CHECK_VALUE(!(rescale && p >= 1.0), op, "p must be in [0, 1) when rescale=True (survivors scale by 1/(1-p)), got ",
                 p);
  check_seed(op, seed, weight.device());
}

}  // namespace quantnoise
