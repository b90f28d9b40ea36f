// Argument checks shared by the CPU, CUDA and emulated CUDA launchers (host only, uses ATen;
// defined in csrc/host/checks.cpp).
//
// Every message names the op, the argument and the value it got. Value errors raise Python
// ValueError, dtype errors TypeError; internal invariants use TORCH_INTERNAL_ASSERT.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>
#include <vector>

#include "quantnoise/kmeans.h"
#include "quantnoise/kmeans_weighted_host.h"

namespace quantnoise {

// "quantnoise::<op>: <argument> must ..., got <value>"
#define QN_CHECK_VALUE(cond, op, ...) TORCH_CHECK_VALUE(cond, "quantnoise::", op, ": ", __VA_ARGS__)
#define QN_CHECK_TYPE(cond, op, ...) TORCH_CHECK_TYPE(cond, "quantnoise::", op, ": ", __VA_ARGS__)

// Float dtypes the kernels compute in (double is supported for gradcheck).
bool is_supported_float(c10::ScalarType dtype);

// A seed is a one-element int64 tensor: on the CPU, or on `device` (read in-kernel there).
void check_seed(std::string_view op, const at::Tensor& seed, const c10::Device& device);
int64_t seed_value_on_cpu(const at::Tensor& seed);

// x [..., features] as [rows, features] (a view where possible). Unlike reshape({-1, features}) it
// also works for features = 0, where F.linear's output is the bias: a checked x has dim >= 1.
at::Tensor flatten_rows(const at::Tensor& x);

// The noise arguments shared by every noise kind (the whole set: make_noise_args, noise_host.h):
// weight [out, ...] float with row length divisible by block_size; p in [0, 1] (< 1 for drop
// with rescale); the seed.
void check_block_noise_args(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                            bool rescale, std::string_view noise, std::string_view op = "block_noise");

// noisy_linear: input [..., in] with weight's dtype and device, weight [out, in], bias [out] or
// None (the noise arguments: make_noise_args).
void check_noisy_linear_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias);
void check_noisy_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& weight);
// block_noise_backward: grad has weight's shape, dtype and device; returns `rows` checked
// (checked_noise_rows, noise_rows.h).
at::Tensor check_noise_grad_args(const at::Tensor& grad, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& rows);

// block_noise's codebook: for noise='centroid', centroids [K, block_size] (K > 0) with weight's
// dtype and device; any other noise kind takes no centroids.
void check_block_noise_centroids(const at::Tensor& weight, int64_t block_size, std::string_view noise,
                                 const std::optional<at::Tensor>& centroids, std::string_view op = "block_noise");

// PQ ops (DESIGN §3.3). codes: uint8 or int32, 2-D, [out, n_blocks] or, with
// codes_transposed, packed [n_blocks, out]; centroids [K, block_size] float, or int8 with
// centroid_scale (and optional zero point) holding 1 or K values. Every code must be < K (scanned
// unless uint8 with K >= 256). Each check_pq_<op>_args checks all of the op's arguments and
// returns the codebook's shape and the output's dtype and shape.
struct PQShape {
  int64_t out, n_blocks, n_centroids, block_size;
};
struct PQArgs {
  PQShape s;
  at::ScalarType out_dtype;
  std::vector<int64_t> out_shape;
};
// pq_decode: shape [out, ...] with prod(shape[1:]) == n_blocks * block_size; output dtype
// out_dtype if given (a float dtype), else the centroids' (float32 for int8 centroids).
PQArgs check_pq_decode_args(const at::Tensor& codes, const at::Tensor& centroids, at::IntArrayRef shape,
                            const std::optional<at::Tensor>& centroid_scale,
                            const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                            std::optional<at::ScalarType> out_dtype);
// pq_linear: x [..., n_blocks*block_size] float; bias [out] float or None; act_bits 0 (off) or
// 2..16; act_granularity 'tensor' | 'token'; path 'auto' | 'lut' | 'tile'. Output x.shape[:-1] +
// [out] in x's dtype.
PQArgs check_pq_linear_args(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& centroids,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& centroid_scale,
                            const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                            int64_t act_bits, std::string_view act_granularity, std::string_view path);
// pq_embedding: codes in the interchange layout; indices int64/int32, each in [0, out). Output
// indices.shape + [n_blocks * block_size], dtype as pq_decode's.
PQArgs check_pq_embedding_args(const at::Tensor& indices, const at::Tensor& codes, const at::Tensor& centroids,
                               const std::optional<at::Tensor>& centroid_scale,
                               const std::optional<at::Tensor>& centroid_zero_point,
                               std::optional<at::ScalarType> out_dtype);

}  // namespace quantnoise

namespace quantnoise {

// kmeans_assign: x [B, N, D] and centroids [B, K, D] float32/float16/bfloat16 on one device,
// 1 <= K <= kKMeansMaxCentroids. kmeans_update: codes [B, N] int64, 1 <= n_centroids <= max.
// `op` names the op in the errors (the weighted ops pass theirs).
void check_kmeans_assign_args(const at::Tensor& x, const at::Tensor& centroids, std::string_view op = "kmeans_assign");
void check_kmeans_update_args(const at::Tensor& x, const at::Tensor& codes, int64_t n_centroids,
                              std::string_view op = "kmeans_update");
// k-means++ (rule: quantnoise/kmeanspp.h):
// kmeanspp_init: x [B, N, D] float32/float16/bfloat16, finite, N >= 1 when B >= 1; first int64 [B]
// in [0, N); uniforms float64 [B, K-1] in [0, 1) with K <= kKMeansMaxCentroids; one device.
void check_kmeanspp_init_args(const at::Tensor& x, const at::Tensor& first, const at::Tensor& uniforms);
// kmeanspp_step: x as above (any N); dmin float32 [B, N]; centroid float [B, D]; one device.
void check_kmeanspp_step_args(const at::Tensor& x, const at::Tensor& dmin, const at::Tensor& centroid);
// kmeanspp_sample: dmin float32 [B, N]; chunk_weights float64 [B, ceil(N / kKMeansPPChunk)];
// target float64 [B], >= 0; one device.
void check_kmeanspp_sample_args(const at::Tensor& dmin, const at::Tensor& chunk_weights, const at::Tensor& target);

// pq_linear_backward: grad_out [..., out] float; x [..., in] with grad_out's leading shape, required
// when centroids_grad (which needs float centroids). grad_x_shape: x's shape, [0] unless input_grad.
struct PQBackwardArgs {
  PQShape s;
  std::vector<int64_t> grad_x_shape;
};
PQBackwardArgs check_pq_linear_backward_args(const at::Tensor& grad_out, const std::optional<at::Tensor>& x,
                                             const at::Tensor& codes, const at::Tensor& centroids,
                                             const std::optional<at::Tensor>& centroid_scale,
                                             const std::optional<at::Tensor>& centroid_zero_point,
                                             bool codes_transposed, bool input_grad, bool centroids_grad);
// pq_embedding_backward: codes interchange [num_embeddings, n_blocks] with values < n_centroids;
// indices int64/int32 in [0, num_embeddings); grad_out indices.shape + [n_blocks * block_size].
PQShape check_pq_embedding_backward_args(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& codes,
                                         int64_t n_centroids);
// kmeans_assign_weighted / kmeans_update_weighted: kmeans_assign's (or kmeans_update's) checks plus
// h float32 [B, G, D, D] (symmetric) or [B, G, D] (diagonal, >= 0) on x's device, G >= 1 dividing N,
// finite, with a non-negative diagonal. Returns the shapes both devices need.
KMeansWeightedShape check_kmeans_assign_weighted_args(const at::Tensor& x, const at::Tensor& centroids,
                                                      const at::Tensor& h);
KMeansWeightedShape check_kmeans_update_weighted_args(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& h,
                                                      int64_t n_centroids);

}  // namespace quantnoise
