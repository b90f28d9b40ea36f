// Argument checks shared by the CPU, CUDA and emulated CUDA launchers (quantnoise/checks.h).
#include "quantnoise/checks.h"

#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/max.h>
#include <ATen/ops/min.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "quantnoise/kmeanspp.h"
#include "quantnoise/noise_rows.h"

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

at::Tensor flatten_rows(const at::Tensor& x) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return x.reshape({rows, x.size(-1)});
}

void check_block_noise_args(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                            bool rescale, std::string_view noise, std::string_view op) {
  QN_CHECK_TYPE(is_supported_float(weight.scalar_type()), op,
                "weight must be float32, float16, bfloat16 or float64, got dtype ", weight.scalar_type());
  QN_CHECK_VALUE(weight.dim() >= 2, op, "weight must have at least 2 dimensions [out, ...], got shape ",
                 weight.sizes());
  QN_CHECK_VALUE(block_size > 0, op, "block_size must be positive, got ", block_size);
  int64_t row = 1;  // product of sizes[1:], also meaningful when out == 0
  for (int64_t d = 1; d < weight.dim(); ++d) row *= weight.size(d);
  QN_CHECK_VALUE(row % block_size == 0, op, "block_size must divide the row length of weight (", row, " for shape ",
                 weight.sizes(), "), got block_size=", block_size);
  QN_CHECK_VALUE(std::isfinite(p) && p >= 0.0 && p <= 1.0, op, "p must be in [0, 1], got ", p);
  QN_CHECK_VALUE(!(noise == "drop" && rescale && p >= 1.0), op,
                 "p must be in [0, 1) when rescale=True (survivors scale by 1/(1-p)), got ", p);
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

void check_noisy_linear_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  constexpr std::string_view op = "noisy_linear";
  QN_CHECK_VALUE(weight.dim() == 2, op, "weight must have shape [out, in], got ", weight.sizes());
  check_matmul_operand(op, "input", input, weight, weight.size(1));
  if (bias.has_value()) {
    QN_CHECK_TYPE(bias->scalar_type() == weight.scalar_type(), op, "bias must have weight's dtype ",
                  weight.scalar_type(), ", got ", bias->scalar_type());
    QN_CHECK_VALUE(bias->device() == weight.device() && bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                   "bias must have shape [", weight.size(0), "] on ", weight.device(), ", got shape ", bias->sizes(),
                   " on ", bias->device());
  }
}

void check_noisy_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& weight) {
  constexpr std::string_view op = "noisy_linear_backward_input";
  QN_CHECK_VALUE(weight.dim() == 2, op, "weight must have shape [out, in], got ", weight.sizes());
  check_matmul_operand(op, "grad_output", grad_output, weight, weight.size(0));
}

at::Tensor check_noise_grad_args(const at::Tensor& grad, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& rows) {
  constexpr std::string_view op = "block_noise_backward";
  QN_CHECK_VALUE(grad.sizes() == weight.sizes(), op, "grad must have weight's shape ", weight.sizes(), ", got ",
                 grad.sizes());
  QN_CHECK_TYPE(grad.scalar_type() == weight.scalar_type(), op, "grad must have weight's dtype ", weight.scalar_type(),
                ", got ", grad.scalar_type());
  QN_CHECK_VALUE(grad.device() == weight.device(), op, "grad must be on weight's device ", weight.device(), ", got ",
                 grad.device());
  return checked_noise_rows(op, rows, weight);
}

}  // namespace quantnoise

namespace quantnoise {

namespace {
bool is_kmeans_float(c10::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

void check_kmeanspp_points(std::string_view op, const at::Tensor& x) {
  QN_CHECK_TYPE(is_kmeans_float(x.scalar_type()), op, "x must be float32, float16 or bfloat16, got dtype ",
                x.scalar_type());
  QN_CHECK_VALUE(x.dim() == 3, op, "x must have 3 dimensions [B, N, D], got shape ", x.sizes());
}

void check_same_device(std::string_view op, const char* ref_name, const at::Tensor& ref, const char* name,
                       const at::Tensor& t) {
  QN_CHECK_VALUE(t.device() == ref.device(), op, name, " must be on ", ref_name, "'s device ", ref.device(), ", got ",
                 t.device());
}
}  // namespace

void check_kmeans_assign_args(const at::Tensor& x, const at::Tensor& centroids, std::string_view op) {
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

void check_kmeans_update_args(const at::Tensor& x, const at::Tensor& codes, int64_t n_centroids, std::string_view op) {
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

namespace {

// What the value checks of h need: non-finite count, smallest diagonal entry, largest |entry|,
// largest asymmetry |h - h^T|. One pass over the data on the CPU; tensor ops (a sync) on a GPU.
struct HValues {
  int64_t n_bad = 0;
  double diag_min = 0.0, scale = 0.0, asym = 0.0;
};

HValues h_values(const at::Tensor& h, int64_t dim, bool diag) {
  HValues v;
  if (!h.is_cpu()) {
    const at::Tensor hf = h.detach();
    v.n_bad = (~hf.isfinite()).sum().item<int64_t>();
    v.diag_min = (diag ? hf : hf.diagonal(0, -2, -1)).min().item<double>();
    v.scale = hf.abs().max().item<double>();
    if (!diag) v.asym = hf.sub(hf.transpose(-1, -2)).abs().max().item<double>();
    return v;
  }
  const at::Tensor hc = h.contiguous();
  const float* p = hc.const_data_ptr<float>();
  const int64_t hd = diag ? dim : dim * dim;
  v.diag_min = std::numeric_limits<double>::infinity();
  for (int64_t g = 0; g < hc.numel() / hd; ++g, p += hd) {
    for (int64_t i = 0; i < (diag ? 1 : dim); ++i) {
      for (int64_t j = 0; j < dim; ++j) {
        const float x = diag ? p[j] : p[i * dim + j];
        if (!std::isfinite(x)) {
          ++v.n_bad;
          continue;
        }
        v.scale = std::max(v.scale, static_cast<double>(std::fabs(x)));
        if (diag || i == j) v.diag_min = std::min(v.diag_min, static_cast<double>(x));
        if (!diag && std::isfinite(p[j * dim + i])) {
          v.asym = std::max(v.asym, static_cast<double>(std::fabs(x - p[j * dim + i])));
        }
      }
    }
  }
  return v;
}

// h: float32 [B, G, D, D] or [B, G, D] on x's device, G dividing N; finite, symmetric (to 1e-5 of
// its largest entry) and with a non-negative diagonal. The value checks read h once (a sync on CUDA).
KMeansWeightedShape check_kmeans_h(std::string_view op, const at::Tensor& x, const at::Tensor& h) {
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2);
  QN_CHECK_TYPE(h.scalar_type() == at::kFloat, op, "h must be float32, got dtype ", h.scalar_type());
  QN_CHECK_VALUE(h.device() == x.device(), op, "h must be on x's device ", x.device(), ", got ", h.device());
  const bool diag = h.dim() == 3;
  QN_CHECK_VALUE(
      (diag || h.dim() == 4) && h.size(0) == batch && h.size(1) >= 1 && h.size(2) == dim && (diag || h.size(3) == dim),
      op, "h must have shape [B, G, D, D] or [B, G, D] with B=", batch, ", D=", dim, " and G >= 1, got ", h.sizes());
  const int64_t groups = h.size(1);
  QN_CHECK_VALUE(n % groups == 0, op, "h's group count G must divide the number of points N=", n, ", got G=", groups);
  if (h.numel() > 0) {
    const HValues v = h_values(h, dim, diag);
    QN_CHECK_VALUE(v.n_bad == 0, op, "h must be finite, got ", v.n_bad, " NaN or infinite values");
    QN_CHECK_VALUE(v.diag_min >= 0.0, op, "h must have a non-negative diagonal (a second moment), got ", v.diag_min);
    QN_CHECK_VALUE(diag || v.asym <= 1e-5 * v.scale, op, "h must be symmetric, got max |h - h^T| = ", v.asym,
                   " for max |h| = ", v.scale);
  }
  return {batch, n, dim, groups, diag};
}

}  // namespace

KMeansWeightedShape check_kmeans_assign_weighted_args(const at::Tensor& x, const at::Tensor& centroids,
                                                      const at::Tensor& h) {
  constexpr std::string_view op = "kmeans_assign_weighted";
  check_kmeans_assign_args(x, centroids, op);
  return check_kmeans_h(op, x, h);
}

KMeansWeightedShape check_kmeans_update_weighted_args(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& h,
                                                      int64_t n_centroids) {
  constexpr std::string_view op = "kmeans_update_weighted";
  check_kmeans_update_args(x, codes, n_centroids, op);
  return check_kmeans_h(op, x, h);
}

void check_kmeanspp_init_args(const at::Tensor& x, const at::Tensor& first, const at::Tensor& uniforms) {
  constexpr std::string_view op = "kmeanspp_init";
  check_kmeanspp_points(op, x);
  const int64_t batch = x.size(0), n = x.size(1);
  QN_CHECK_TYPE(first.scalar_type() == at::kLong, op, "first must be int64, got dtype ", first.scalar_type());
  QN_CHECK_TYPE(uniforms.scalar_type() == at::kDouble, op, "uniforms must be float64, got dtype ",
                uniforms.scalar_type());
  QN_CHECK_VALUE(first.dim() == 1 && first.size(0) == batch, op, "first must have shape [B] = [", batch, "], got ",
                 first.sizes());
  QN_CHECK_VALUE(uniforms.dim() == 2 && uniforms.size(0) == batch, op,
                 "uniforms must have shape [B, K-1] with B=", batch, ", got ", uniforms.sizes());
  QN_CHECK_VALUE(uniforms.size(1) < kKMeansMaxCentroids, op, "uniforms must hold at most ", kKMeansMaxCentroids - 1,
                 " draws per problem (K <= ", kKMeansMaxCentroids, "), got ", uniforms.size(1));
  check_same_device(op, "x", x, "first", first);
  check_same_device(op, "x", x, "uniforms", uniforms);
  if (batch == 0) return;
  QN_CHECK_VALUE(n >= 1, op, "x must hold at least one point per problem, got shape ", x.sizes());
  const int64_t lo = first.min().item<int64_t>(), hi = first.max().item<int64_t>();
  QN_CHECK_VALUE(lo >= 0 && hi < n, op, "first must lie in [0, N=", n, "), got values in [", lo, ", ", hi, "]");
  if (uniforms.numel() > 0) {
    const double u_lo = uniforms.min().item<double>(), u_hi = uniforms.max().item<double>();
    QN_CHECK_VALUE(u_lo >= 0.0 && u_hi < 1.0, op, "uniforms must lie in [0, 1), got values in [", u_lo, ", ", u_hi,
                   "]");
  }
  QN_CHECK_VALUE(at::isfinite(x).all().item<bool>(), op, "x must be finite (no NaN or infinity)");
}

void check_kmeanspp_step_args(const at::Tensor& x, const at::Tensor& dmin, const at::Tensor& centroid) {
  constexpr std::string_view op = "kmeanspp_step";
  check_kmeanspp_points(op, x);
  QN_CHECK_TYPE(dmin.scalar_type() == at::kFloat, op, "dmin must be float32, got dtype ", dmin.scalar_type());
  QN_CHECK_TYPE(is_supported_float(centroid.scalar_type()), op, "centroid must be a float tensor, got dtype ",
                centroid.scalar_type());
  QN_CHECK_VALUE(dmin.dim() == 2 && dmin.size(0) == x.size(0) && dmin.size(1) == x.size(1), op,
                 "dmin must have shape [B, N] = [", x.size(0), ", ", x.size(1), "], got ", dmin.sizes());
  QN_CHECK_VALUE(centroid.dim() == 2 && centroid.size(0) == x.size(0) && centroid.size(1) == x.size(2), op,
                 "centroid must have shape [B, D] = [", x.size(0), ", ", x.size(2), "], got ", centroid.sizes());
  check_same_device(op, "x", x, "dmin", dmin);
  check_same_device(op, "x", x, "centroid", centroid);
}

void check_kmeanspp_sample_args(const at::Tensor& dmin, const at::Tensor& chunk_weights, const at::Tensor& target) {
  constexpr std::string_view op = "kmeanspp_sample";
  QN_CHECK_TYPE(dmin.scalar_type() == at::kFloat, op, "dmin must be float32, got dtype ", dmin.scalar_type());
  QN_CHECK_TYPE(chunk_weights.scalar_type() == at::kDouble, op, "chunk_weights must be float64, got dtype ",
                chunk_weights.scalar_type());
  QN_CHECK_TYPE(target.scalar_type() == at::kDouble, op, "target must be float64, got dtype ", target.scalar_type());
  QN_CHECK_VALUE(dmin.dim() == 2, op, "dmin must have 2 dimensions [B, N], got shape ", dmin.sizes());
  const int64_t batch = dmin.size(0), n_chunks = kmeanspp_n_chunks(dmin.size(1));
  QN_CHECK_VALUE(chunk_weights.dim() == 2 && chunk_weights.size(0) == batch && chunk_weights.size(1) == n_chunks, op,
                 "chunk_weights must have shape [B, ceil(N / ", kKMeansPPChunk, ")] = [", batch, ", ", n_chunks,
                 "], got ", chunk_weights.sizes());
  QN_CHECK_VALUE(target.dim() == 1 && target.size(0) == batch, op, "target must have shape [B] = [", batch, "], got ",
                 target.sizes());
  check_same_device(op, "dmin", dmin, "chunk_weights", chunk_weights);
  check_same_device(op, "dmin", dmin, "target", target);
  if (batch > 0) {
    const double lo = target.min().item<double>();
    QN_CHECK_VALUE(lo >= 0.0, op, "target must be >= 0, got ", lo);
  }
}

}  // namespace quantnoise

namespace quantnoise {
namespace {

void check_pq_codes_layout(std::string_view op, const at::Tensor& codes, bool codes_transposed) {
  QN_CHECK_TYPE(codes.scalar_type() == at::kByte || codes.scalar_type() == at::kInt, op,
                "codes must be uint8 or int32, got dtype ", codes.scalar_type());
  QN_CHECK_VALUE(codes.dim() == 2, op, "codes must be 2-D ", codes_transposed ? "[n_blocks, out]" : "[out, n_blocks]",
                 ", got shape ", codes.sizes());
}

// Codes must address a centroid; uint8 codes with K >= 256 always do, so skip the scan there.
void check_pq_codes_range(std::string_view op, const at::Tensor& codes, int64_t K) {
  if (codes.numel() > 0 && !(codes.scalar_type() == at::kByte && K >= 256)) {
    const int64_t lo = codes.min().item<int64_t>(), hi = codes.max().item<int64_t>();
    QN_CHECK_VALUE(lo >= 0 && hi < K, op, "codes must be in [0, n_centroids=", K, "), got values in [", lo, ", ", hi,
                   "]");
  }
}

PQShape check_pq_codebook_args(std::string_view op, const at::Tensor& codes, const at::Tensor& centroids,
                               const std::optional<at::Tensor>& centroid_scale,
                               const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                               const c10::Device& device) {
  check_pq_codes_layout(op, codes, codes_transposed);
  QN_CHECK_TYPE(is_supported_float(centroids.scalar_type()) || centroids.scalar_type() == at::kChar, op,
                "centroids must be float32, float16, bfloat16, float64 or int8, got dtype ", centroids.scalar_type());
  QN_CHECK_VALUE(centroids.dim() == 2 && centroids.size(0) > 0 && centroids.size(1) > 0, op,
                 "centroids must be 2-D [n_centroids, block_size] and non-empty, got shape ", centroids.sizes());
  QN_CHECK_VALUE(codes.device() == device && centroids.device() == device, op, "codes and centroids must be on ",
                 device, ", got ", codes.device(), " and ", centroids.device());
  const int64_t K = centroids.size(0);
  const bool is_int8 = centroids.scalar_type() == at::kChar;
  QN_CHECK_VALUE(!is_int8 || centroid_scale.has_value(), op, "centroid_scale must be given for int8 centroids");
  QN_CHECK_VALUE(is_int8 || (!centroid_scale.has_value() && !centroid_zero_point.has_value()), op,
                 "centroid_scale/centroid_zero_point apply to int8 centroids only, got centroids of dtype ",
                 centroids.scalar_type());
  for (const auto* t : {&centroid_scale, &centroid_zero_point}) {
    if (!t->has_value()) continue;
    const at::Tensor& q = **t;
    const char* name = t == &centroid_scale ? "centroid_scale" : "centroid_zero_point";
    QN_CHECK_VALUE(q.numel() == 1 || (q.dim() == 1 && q.numel() == K), op, name, " must hold 1 or n_centroids=", K,
                   " values, got shape ", q.sizes());
    QN_CHECK_VALUE(q.device() == device || q.device().is_cpu(), op, name, " must be on ", device, ", got ", q.device());
  }
  const int64_t out = codes_transposed ? codes.size(1) : codes.size(0);
  const int64_t n_blocks = codes_transposed ? codes.size(0) : codes.size(1);
  check_pq_codes_range(op, codes, K);
  return PQShape{out, n_blocks, K, centroids.size(1)};
}

void check_pq_linear_operands(const at::Tensor& x, const PQShape& s, const std::optional<at::Tensor>& bias,
                              int64_t act_bits, std::string_view act_granularity, std::string_view path) {
  constexpr std::string_view op = "pq_linear";
  QN_CHECK_TYPE(is_supported_float(x.scalar_type()), op, "x must be float32, float16, bfloat16 or float64, got dtype ",
                x.scalar_type());
  QN_CHECK_VALUE(x.dim() >= 1, op, "x must have at least 1 dimension [..., in_features], got shape ", x.sizes());
  QN_CHECK_VALUE(x.size(-1) == s.n_blocks * s.block_size, op,
                 "x must have in_features = n_blocks * block_size = ", s.n_blocks, " * ", s.block_size, " = ",
                 s.n_blocks * s.block_size, " in its last dimension, got shape ", x.sizes());
  if (bias.has_value()) {
    QN_CHECK_TYPE(is_supported_float(bias->scalar_type()), op, "bias must be a float tensor, got dtype ",
                  bias->scalar_type());
    QN_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == s.out, op, "bias must have shape [out_features=", s.out,
                   "], got shape ", bias->sizes());
    QN_CHECK_VALUE(bias->device() == x.device(), op, "bias must be on ", x.device(), ", got ", bias->device());
  }
  QN_CHECK_VALUE(act_bits == 0 || (act_bits >= 2 && act_bits <= 16), op,
                 "act_bits must be 0 (no activation fake-quant) or in [2, 16], got ", act_bits);
  QN_CHECK_VALUE(act_granularity == "tensor" || act_granularity == "token", op,
                 "act_granularity must be one of {'tensor', 'token'}, got '", act_granularity, "'");
  QN_CHECK_VALUE(path == "auto" || path == "lut" || path == "tile", op,
                 "path must be one of {'auto', 'lut', 'tile'}, got '", path, "'");
}

void check_pq_decode_shape(const PQShape& s, at::IntArrayRef shape) {
  constexpr std::string_view op = "pq_decode";
  int64_t row = 1;
  for (size_t d = 1; d < shape.size(); ++d) row *= shape[d];
  QN_CHECK_VALUE(shape.size() >= 2 && shape[0] == s.out && row == s.n_blocks * s.block_size, op,
                 "shape must be [out=", s.out, ", ...] with n_blocks * block_size = ", s.n_blocks * s.block_size,
                 " entries per row, got ", shape);
}

void check_pq_embedding_indices(std::string_view op, const at::Tensor& indices, const PQShape& s) {
  QN_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, op,
                "indices must be int64 or int32, got dtype ", indices.scalar_type());
  if (indices.numel() > 0) {
    const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
    QN_CHECK_VALUE(lo >= 0 && hi < s.out, op, "indices must be in [0, num_embeddings=", s.out, "), got values in [", lo,
                   ", ", hi, "]");
  }
}

at::ScalarType check_pq_out_dtype(std::string_view op, const at::Tensor& centroids,
                                  std::optional<at::ScalarType> out_dtype) {
  const at::ScalarType dtype =
      out_dtype.value_or(centroids.scalar_type() == at::kChar ? at::kFloat : centroids.scalar_type());
  QN_CHECK_TYPE(is_supported_float(dtype), op, "out_dtype must be a float dtype, got ", dtype);
  return dtype;
}

}  // namespace

PQArgs check_pq_decode_args(const at::Tensor& codes, const at::Tensor& centroids, at::IntArrayRef shape,
                            const std::optional<at::Tensor>& centroid_scale,
                            const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                            std::optional<at::ScalarType> out_dtype) {
  const PQShape s = check_pq_codebook_args("pq_decode", codes, centroids, centroid_scale, centroid_zero_point,
                                           codes_transposed, codes.device());
  check_pq_decode_shape(s, shape);
  return {s, check_pq_out_dtype("pq_decode", centroids, out_dtype), shape.vec()};
}

PQArgs check_pq_linear_args(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& centroids,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& centroid_scale,
                            const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                            int64_t act_bits, std::string_view act_granularity, std::string_view path) {
  const PQShape s = check_pq_codebook_args("pq_linear", codes, centroids, centroid_scale, centroid_zero_point,
                                           codes_transposed, x.device());
  check_pq_linear_operands(x, s, bias, act_bits, act_granularity, path);
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = s.out;
  return {s, x.scalar_type(), std::move(out_shape)};
}

PQArgs check_pq_embedding_args(const at::Tensor& indices, const at::Tensor& codes, const at::Tensor& centroids,
                               const std::optional<at::Tensor>& centroid_scale,
                               const std::optional<at::Tensor>& centroid_zero_point,
                               std::optional<at::ScalarType> out_dtype) {
  const PQShape s = check_pq_codebook_args("pq_embedding", codes, centroids, centroid_scale, centroid_zero_point,
                                           /*codes_transposed=*/false, indices.device());
  check_pq_embedding_indices("pq_embedding", indices, s);
  std::vector<int64_t> out_shape = indices.sizes().vec();
  out_shape.push_back(s.n_blocks * s.block_size);
  return {s, check_pq_out_dtype("pq_embedding", centroids, out_dtype), std::move(out_shape)};
}

PQBackwardArgs check_pq_linear_backward_args(const at::Tensor& grad_out, const std::optional<at::Tensor>& x,
                                             const at::Tensor& codes, const at::Tensor& centroids,
                                             const std::optional<at::Tensor>& centroid_scale,
                                             const std::optional<at::Tensor>& centroid_zero_point,
                                             bool codes_transposed, bool input_grad, bool centroids_grad) {
  constexpr std::string_view op = "pq_linear_backward";
  const PQShape s = check_pq_codebook_args(op, codes, centroids, centroid_scale, centroid_zero_point, codes_transposed,
                                           grad_out.device());
  QN_CHECK_TYPE(is_supported_float(grad_out.scalar_type()), op,
                "grad_out must be float32, float16, bfloat16 or float64, got dtype ", grad_out.scalar_type());
  QN_CHECK_VALUE(grad_out.dim() >= 1 && grad_out.size(-1) == s.out, op, "grad_out must have shape [..., ", s.out,
                 "] (out_features), got ", grad_out.sizes());
  std::vector<int64_t> x_shape = grad_out.sizes().vec();
  x_shape.back() = s.n_blocks * s.block_size;
  if (centroids_grad) {
    QN_CHECK_VALUE(x.has_value(), op, "x must be given when centroids_grad=True");
    QN_CHECK_VALUE(centroids.scalar_type() != at::kChar, op,
                   "centroids_grad needs float centroids, got int8 centroids (they take no gradient)");
  }
  if (x.has_value()) {
    QN_CHECK_TYPE(is_supported_float(x->scalar_type()), op,
                  "x must be float32, float16, bfloat16 or float64, got dtype ", x->scalar_type());
    QN_CHECK_VALUE(x->sizes().vec() == x_shape, op, "x must have shape ", at::IntArrayRef(x_shape),
                   " (grad_out's leading dimensions + [in_features]), got ", x->sizes());
    QN_CHECK_VALUE(x->device() == grad_out.device(), op, "x must be on ", grad_out.device(), ", got ", x->device());
  }
  return {s, input_grad ? std::move(x_shape) : std::vector<int64_t>{0}};
}

PQShape check_pq_embedding_backward_args(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& codes,
                                         int64_t n_centroids) {
  constexpr std::string_view op = "pq_embedding_backward";
  check_pq_codes_layout(op, codes, /*codes_transposed=*/false);
  QN_CHECK_VALUE(n_centroids > 0, op, "n_centroids must be positive, got ", n_centroids);
  QN_CHECK_VALUE(codes.device() == grad_out.device() && indices.device() == grad_out.device(), op,
                 "indices and codes must be on grad_out's device ", grad_out.device(), ", got ", indices.device(),
                 " and ", codes.device());
  QN_CHECK_TYPE(is_supported_float(grad_out.scalar_type()), op,
                "grad_out must be float32, float16, bfloat16 or float64, got dtype ", grad_out.scalar_type());
  const int64_t n_blocks = codes.size(1);
  const int64_t dim = grad_out.dim() == indices.dim() + 1 ? grad_out.size(-1) : -1;
  std::vector<int64_t> expected = indices.sizes().vec();
  QN_CHECK_VALUE(n_blocks > 0 && dim > 0 && dim % n_blocks == 0 &&
                     at::IntArrayRef(grad_out.sizes()).slice(0, indices.dim()) == at::IntArrayRef(expected),
                 op, "grad_out must have shape ", at::IntArrayRef(expected), " + [", n_blocks,
                 " * block_size] (indices' shape + [embedding_dim]), got ", grad_out.sizes());
  check_pq_codes_range(op, codes, n_centroids);
  const PQShape s{codes.size(0), n_blocks, n_centroids, dim / n_blocks};
  check_pq_embedding_indices(op, indices, s);
  return s;
}

}  // namespace quantnoise

namespace quantnoise {

void check_block_noise_centroids(const at::Tensor& weight, int64_t block_size, std::string_view noise,
                                 const std::optional<at::Tensor>& centroids, std::string_view op) {
  if (noise != "centroid") {
    QN_CHECK_VALUE(!centroids.has_value(), op, "centroids apply to noise='centroid' only, got noise='", noise, "'");
    return;
  }
  QN_CHECK_VALUE(centroids.has_value(), op,
                 "centroids must be given for noise='centroid' (a [K, block_size] codebook)");
  const at::Tensor& c = *centroids;
  QN_CHECK_VALUE(c.dim() == 2 && c.size(0) > 0 && c.size(1) == block_size, op,
                 "centroids must have shape [K, block_size=", block_size, "] with K > 0, got shape ", c.sizes());
  QN_CHECK_TYPE(c.scalar_type() == weight.scalar_type(), op, "centroids must have weight's dtype ",
                weight.scalar_type(), ", got ", c.scalar_type());
  QN_CHECK_VALUE(c.device() == weight.device(), op, "centroids must be on weight's device ", weight.device(), ", got ",
                 c.device());
}

}  // namespace quantnoise
