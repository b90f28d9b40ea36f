// Host helpers of the PQ ops shared by the CPU, CUDA and emulated CUDA launchers (pq_host.h).
#include "quantnoise/pq_host.h"

#include <ATen/ops/mul.h>
#include <ATen/ops/sub.h>

namespace quantnoise {

at::Tensor pq_dequantized_centroids(const at::Tensor& centroids, const std::optional<at::Tensor>& scale,
                                    const std::optional<at::Tensor>& zero_point, at::ScalarType dtype) {
  if (centroids.scalar_type() != at::kChar) return centroids.to(dtype).contiguous();
  // (c - zero_point) * scale in float32, one value or one per centroid (reference.py does the same).
  at::Tensor c = centroids.to(at::kFloat);
  if (zero_point.has_value()) c = at::sub(c, zero_point->to(c.device(), at::kFloat).reshape({-1, 1}));
  c = at::mul(c, scale->to(c.device(), at::kFloat).reshape({-1, 1}));
  return c.to(dtype).contiguous();
}

}  // namespace quantnoise
