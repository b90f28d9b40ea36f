// The noise arguments of the Quant-Noise ops (quantnoise/noise_host.h).
#include "quantnoise/noise_host.h"

#include <algorithm>
#include <cmath>

#include "quantnoise/checks.h"

namespace quantnoise {

namespace {

NoiseKind noise_kind_from_name(std::string_view op, std::string_view noise) {
  if (noise == "drop") return NoiseKind::kDrop;
  if (noise == "fake_quant") return NoiseKind::kFakeQuant;
  QN_CHECK_VALUE(noise == "centroid", op, "noise must be one of {'drop', 'fake_quant', 'centroid'}, got '", noise, "'");
  return NoiseKind::kCentroid;
}

void check_fake_quant_grid(std::string_view op, const at::Tensor& weight, std::string_view noise,
                           const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& zero_point,
                           int64_t quant_min, int64_t quant_max) {
  if (noise != "fake_quant") {
    QN_CHECK_VALUE(!scale.has_value() && !zero_point.has_value(), op,
                   "scale and zero_point apply to noise='fake_quant' only, got noise='", noise, "'");
    return;
  }
  QN_CHECK_VALUE(scale.has_value() && zero_point.has_value(), op,
                 "scale and zero_point must be given for noise='fake_quant'");
  QN_CHECK_VALUE(quant_max - quant_min >= 3 && quant_max - quant_min <= 255, op,
                 "quant_min and quant_max must span 2 to 8 bits (4 to 256 levels), got [", quant_min, ", ", quant_max,
                 "]");
  const at::Tensor &s = *scale, &z = *zero_point;
  const int64_t out = weight.size(0);
  QN_CHECK_TYPE(s.scalar_type() == at::kFloat, op, "scale must be float32, got dtype ", s.scalar_type());
  QN_CHECK_TYPE(z.scalar_type() == at::kInt, op, "zero_point must be int32, got dtype ", z.scalar_type());
  QN_CHECK_VALUE(s.dim() == 1 && (s.size(0) == 1 || s.size(0) == out), op,
                 "scale must have shape [1] (per tensor) or [", out, "] (per output channel), got shape ", s.sizes());
  QN_CHECK_VALUE(z.sizes() == s.sizes(), op, "zero_point must have scale's shape ", s.sizes(), ", got ", z.sizes());
  QN_CHECK_VALUE(s.device() == weight.device(), op, "scale must be on weight's device ", weight.device(), ", got ",
                 s.device());
  QN_CHECK_VALUE(z.device() == weight.device(), op, "zero_point must be on weight's device ", weight.device(), ", got ",
                 z.device());
  // Values: on a GPU reading them would sync the host every step; none to read for a weight with 0 rows.
  if (!s.device().is_cpu() || s.numel() == 0) return;
  const at::Tensor sc = s.contiguous(), zc = z.contiguous();
  const float* sp = sc.const_data_ptr<float>();
  const int32_t* zp = zc.const_data_ptr<int32_t>();
  bool scale_ok = true, zero_point_ok = true;
  float s_min = sp[0], s_max = sp[0];
  int32_t z_min = zp[0], z_max = zp[0];
  for (int64_t i = 0; i < sc.numel(); ++i) {
    scale_ok = scale_ok && std::isfinite(sp[i]) && sp[i] > 0.0f;
    zero_point_ok = zero_point_ok && zp[i] >= quant_min && zp[i] <= quant_max;
    s_min = std::min(s_min, sp[i]), s_max = std::max(s_max, sp[i]);
    z_min = std::min(z_min, zp[i]), z_max = std::max(z_max, zp[i]);
  }
  QN_CHECK_VALUE(scale_ok, op, "scale must be positive and finite, got values in [", s_min, ", ", s_max, "]");
  QN_CHECK_VALUE(zero_point_ok, op, "zero_point must be in [quant_min=", quant_min, ", quant_max=", quant_max,
                 "], got values in [", z_min, ", ", z_max, "]");
}

}  // namespace

NoiseArgs make_noise_args(std::string_view op, const at::Tensor& weight, const at::Tensor& seed, double p,
                          int64_t block_size, int64_t offset, bool rescale, std::string_view noise,
                          const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max) {
  const NoiseKind kind = noise_kind_from_name(op, noise);
  check_block_noise_args(weight, seed, p, block_size, rescale, noise, op);
  check_block_noise_centroids(weight, block_size, noise, centroids, op);
  check_fake_quant_grid(op, weight, noise, scale, zero_point, quant_min, quant_max);
  NoiseArgs args{kind, block_size, make_block_rng(seed.device().is_cpu() ? seed_value_on_cpu(seed) : 0, offset, p),
                 kind == NoiseKind::kDrop && rescale ? 1.0 / (1.0 - p) : 1.0};
  if (centroids.has_value()) args.centroids = centroids->contiguous();
  if (scale.has_value()) args.scale = scale->contiguous();
  if (zero_point.has_value()) args.zero_point = zero_point->contiguous();
  args.quant_min = quant_min;
  args.quant_max = quant_max;
  if (weight.device().is_cpu()) args.isa = cpu_isa();  // here, outside any parallel region
  return args;
}

}  // namespace quantnoise
