// Host helpers of the weighted k-means ops shared by the CPU kernels, the CUDA launchers and the
// emulated CUDA launchers (ATen, no kernels). Defined in csrc/host/kmeans_weighted_host.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace quantnoise {

// What check_kmeans_weighted_args found: the shapes, and whether H is diagonal.
struct KMeansWeightedShape {
  int64_t batch, n, dim, groups;
  bool diag;
  int64_t h_entries() const { return diag ? dim : dim * dim; }  // floats of one group's H
};

// kmeans_update_weighted's inputs made contiguous (h as float32) and its outputs zeroed on x's device:
// h_sums [B, K, D, D] (or [B, K, D]), hx_sums [B, K, D], sums [B, K, D] float32, counts [B, K] int64.
struct KMeansWeightedUpdateIO {
  KMeansWeightedShape shape;
  int64_t k;
  at::Tensor x, codes, h, h_sums, hx_sums, sums, counts;
  bool empty() const { return shape.batch == 0 || shape.n == 0; }
};
KMeansWeightedUpdateIO kmeans_weighted_update_io(const KMeansWeightedShape& shape, const at::Tensor& x,
                                                 const at::Tensor& codes, const at::Tensor& h, int64_t n_centroids);

}  // namespace quantnoise
