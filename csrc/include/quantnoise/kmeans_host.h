// Host helpers of the k-means ops shared by the CPU kernels, the CUDA launchers and the emulated
// CUDA launchers (ATen, no kernels). Defined in csrc/host/kmeans_host.cpp, which the emulation
// extension (python_tests/emu.py) compiles too.
#pragma once

#include <ATen/core/Tensor.h>

namespace quantnoise {

// kmeans_update's inputs made contiguous and its outputs zeroed: sums [B, K, D] float32 and
// counts [B, K] int64 on x's device. Call after check_kmeans_update_args (and the device guard).
struct KMeansUpdateIO {
  int64_t batch, n, dim, k;
  at::Tensor x, codes, sums, counts;
  bool empty() const { return batch == 0 || n == 0; }
};
KMeansUpdateIO kmeans_update_io(const at::Tensor& x, const at::Tensor& codes, int64_t n_centroids);

// kmeans_assign's overflow bound of each problem: the largest |c| of centroids [B, K, D], NaN
// ignored, float32 [B] on the centroids' device (kmeans_needs_exact, quantnoise/kmeans.h).
at::Tensor kmeans_centroid_bounds(const at::Tensor& centroids);

}  // namespace quantnoise
