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

namespace quantnoise {

namespace {
bool is_kmeans_float(c10::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}
}  // namespace

void check_kmeans_assign_args(const at::Tensor& x, const at::Tensor& centroids) {
  constexpr std::string_view op = "kmeans_assign";
  QN_CHECK_TYPE(is_kmeans_float(x.scalar_type()), op, "x must be float32, float16 or bfloat16, got dtype ",
                x.scalar_type());
  QN_CHECK_TYPE(is_kmeans_float(centroids.scalar_type()), op,
                "centroids must be float32, float16 or bfloat16, got dtype ", centroids.scalar_type());
  QN_CHECK_VALUE(x.dim() == 3, op, "x must have 3 dimensions [B, N, D], got shape ", x.sizes());
  QN_CHECK_VALUE(centroids.dim() == 3, op, "centroids must have 3 dimensions [B, K, D], got shape ", centroids.sizes());
  QN_CHECK_VALUE(centroids.size(0) == x.size(0), op, "centroids must have x's batch size ", x.size(0), ", got shape ",
                 centroids.sizes());
  QN_CHECK_VALUE(centroids.size(2) == x.size(2), op, "centroids must have x's dimension D=", x.size(2), ", got shape ",
                 centroids.sizes());
  QN_CHECK_VALUE(centroids.size(1) >= 1 && centroids.size(1) <= kKMeansMaxCentroids, op,
                 "centroids must hold between 1 and ", kKMeansMaxCentroids, " centroids, got K=", centroids.size(1));
  QN_CHECK_VALUE(x.device() == centroids.device(), op, "centroids must be on x's device ", x.device(), ", got ",
                 centroids.device());
}

void check_kmeans_update_args(const at::Tensor& x, const at::Tensor& codes, int64_t n_centroids) {
  constexpr std::string_view op = "kmeans_update";
  QN_CHECK_TYPE(is_kmeans_float(x.scalar_type()), op, "x must be float32, float16 or bfloat16, got dtype ",
                x.scalar_type());
  QN_CHECK_TYPE(codes.scalar_type() == at::kLong, op, "codes must be int64, got dtype ", codes.scalar_type());
  QN_CHECK_VALUE(x.dim() == 3, op, "x must have 3 dimensions [B, N, D], got shape ", x.sizes());
  QN_CHECK_VALUE(codes.dim() == 2 && codes.size(0) == x.size(0) && codes.size(1) == x.size(1), op,
                 "codes must have shape [B, N] = [", x.size(0), ", ", x.size(1), "], got ", codes.sizes());
  QN_CHECK_VALUE(n_centroids >= 1 && n_centroids <= kKMeansMaxCentroids, op, "n_centroids must be in [1, ",
                 kKMeansMaxCentroids, "], got ", n_centroids);
  QN_CHECK_VALUE(x.device() == codes.device(), op, "codes must be on x's device ", x.device(), ", got ",
                 codes.device());
}

}  // namespace quantnoise
