// Argument checks shared by the CPU and CUDA launchers (host only, uses ATen).
//
// Every message names the op, the argument and the value it got. Value errors raise Python
// ValueError, dtype errors TypeError; internal invariants use TORCH_INTERNAL_ASSERT.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

#include "quantnoise/kmeans.h"

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

// block_noise's codebook: for noise='centroid', centroids [K, block_size] (K > 0) with weight's
// dtype and device; any other noise kind takes no centroids.
void check_block_noise_centroids(const at::Tensor& weight, int64_t block_size, std::string_view noise,
                                 const std::optional<at::Tensor>& centroids);

// PQ ops (DESIGN §3.3). codes: uint8 or int32, 2-D, [out, n_blocks] or (transposed) [n_blocks,
// out]; centroids [K, block_size] float, or int8 with centroid_scale (and optional zero point)
// holding 1 or K values. Every code must be < K (scanned unless uint8 with K >= 256).
// Returns {out, n_blocks, K, block_size}.
struct PQShape {
  int64_t out, n_blocks, n_centroids, block_size;
};
PQShape check_pq_codebook_args(std::string_view op, const at::Tensor& codes, const at::Tensor& centroids,
                               const std::optional<at::Tensor>& centroid_scale,
                               const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                               const c10::Device& device);
// pq_linear: x [..., n_blocks*block_size] float; bias [out] float or None; act_bits 0 (off) or
// 2..16; act_granularity 'tensor' | 'token'; path 'auto' | 'lut' | 'tile'.
void check_pq_linear_args(const at::Tensor& x, const PQShape& s, const std::optional<at::Tensor>& bias,
                          int64_t act_bits, std::string_view act_granularity, std::string_view path);
// pq_decode: shape [out, ...] with prod(shape[1:]) == n_blocks * block_size.
void check_pq_decode_shape(const PQShape& s, at::IntArrayRef shape);
// pq_embedding: indices integer, each in [0, out).
void check_pq_embedding_indices(const at::Tensor& indices, const PQShape& s);
// pq_decode / pq_embedding: the output dtype, out_dtype if given (a float dtype), else the
// centroids' dtype (float32 for int8 centroids).
at::ScalarType check_pq_out_dtype(std::string_view op, const at::Tensor& centroids,
                                  std::optional<at::ScalarType> out_dtype);

}  // namespace quantnoise

namespace quantnoise {

// kmeans_assign: x [B, N, D] and centroids [B, K, D] float32/float16/bfloat16 on one device,
// 1 <= K <= kKMeansMaxCentroids. kmeans_update: codes [B, N] int64, 1 <= n_centroids <= max.
void check_kmeans_assign_args(const at::Tensor& x, const at::Tensor& centroids);
void check_kmeans_update_args(const at::Tensor& x, const at::Tensor& codes, int64_t n_centroids);

}  // namespace quantnoise
